"""The one registry idiom: registration, clear errors, keyword filtering and flags derived from signatures."""
import pytest

from registry import Registry, accepted_kwargs, kwargs_from


def make():
    reg = Registry("loss", flag="--loss_type", context=("cls_num_list", "weight"))

    @reg.register("A")
    class A:
        flag_names = {"s": "a_scale"}
        flag_help = {"s": "logit scale"}

        def __init__(self, cls_num_list, max_m=0.5, weight=None, s=30.0, steps=(1, 2)):
            self.args = (cls_num_list, max_m, weight, s, steps)

    @reg.register("B")
    class B:
        def __init__(self, cls_num_list, max_m=0.5, on=True):
            self.args = (cls_num_list, max_m, on)

    return reg, A, B


def test_build_passes_only_accepted_keywords():
    reg, _, _ = make()
    built = reg.build("B", [3, 1], max_m=0.2, s=9.0, on=False)
    assert built.args == ([3, 1], 0.2, False)


def test_unknown_name_names_the_flag_and_the_choices():
    reg, _, _ = make()
    with pytest.raises(ValueError, match=r"unknown --loss_type 'C'; choose one of: A, B"):
        reg["C"]


def test_double_registration_is_refused():
    reg, A, _ = make()
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("A", A)


def test_hyperparameters_merge_by_destination_with_owners_types_and_renames():
    reg, _, _ = make()
    hps = {hp.dest: hp for hp in reg.hyperparameters()}
    assert set(hps) == {"max_m", "a_scale", "steps", "on"}
    assert hps["max_m"].owners == ("A", "B") and hps["max_m"].type is float
    assert hps["a_scale"].keyword == "s" and hps["a_scale"].help == "logit scale"
    assert hps["steps"].nargs == "*" and hps["steps"].type is int
    assert hps["on"].type is bool


def test_conflicting_defaults_are_a_declaration_error():
    reg, _, _ = make()

    @reg.register("C")
    class C:
        def __init__(self, max_m=0.3):
            pass

    with pytest.raises(ValueError, match="different defaults"):
        reg.hyperparameters()


def test_kwargs_from_maps_destinations_back_to_keywords():
    _, A, _ = make()
    assert kwargs_from(A, {"a_scale": 10.0, "max_m": 0.1, "other": 1}, context=("cls_num_list", "weight")) == \
        {"s": 10.0, "max_m": 0.1}
    assert accepted_kwargs(lambda x, **kw: None, {"a": 1}) == {"a": 1}


def test_unregister_removes_an_entry_and_unknown_names_stay_clear_errors():
    reg, A, _ = make()
    assert reg.unregister("A") is A and "A" not in reg and reg.names() == ["B"]
    with pytest.raises(ValueError, match="unknown --loss_type 'A'"):
        reg.unregister("A")
