from pytest_instrumental.reports.manifest import package_versions, scenario_set_sha256
from pytest_instrumental.vocabulary.scenarios import load_scenarios


def test_the_scenario_hash_tells_scenario_sets_apart() -> None:
    everything = load_scenarios()
    assert scenario_set_sha256(everything) == scenario_set_sha256(load_scenarios())
    assert scenario_set_sha256(everything.subset("paper")) != scenario_set_sha256(everything)


def test_package_versions_name_missing_packages_as_none() -> None:
    versions = package_versions(["pytest", "no-such-distribution-here"])
    assert versions["pytest"] and versions["no-such-distribution-here"] is None
