"""Papers' tables as data (reproduce.py): load a table spec (configs/tables/*.yaml), expand it into ordinary
script runs, run the missing ones, and report our numbers next to the papers'.

* ``spec``: the spec schema (documented there), loading and validation;
* ``scripts``: the scripts a table runs, each described by its own ``RUN`` declaration (engine.train.runspec);
* ``plan``: the expansion into jobs (command lines, folders, outputs, dependencies);
* ``runner``: running the unfinished jobs as subprocesses;
* ``report``: the Markdown and CSV reports.
"""
from engine.tables.plan import Job, Plan, expand
from engine.tables.report import write_report
from engine.tables.runner import RunResult, run_plan
from engine.tables.scripts import TableError, check_config, load_script
from engine.tables.spec import METRICS, load_table, pick_seeds, table_path

__all__ = ["Job", "Plan", "expand", "write_report", "RunResult", "run_plan", "TableError", "check_config",
           "load_script", "METRICS", "load_table", "pick_seeds", "table_path"]
