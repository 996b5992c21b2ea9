"""ImageNet-LT and iNaturalist 2018: list-file datasets, samplers and the two-stage (feature, cRT) trainer."""
