"""spec.version is Semantic Versioning 2.0.0: the cases semver.org's grammar decides.

The same pattern goes into the CRD (the API server's RE2) and pydantic (Rust regex);
the integration tier applies some of the invalid ones to the real API server.
"""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from modelsmith.api.common import SEMVER
from modelsmith.api.finetune import FineTuneSpec

VALID = [
    "0.0.4",
    "1.2.3",
    "10.20.30",
    "1.2.3-alpha.20231001",
    "1.1.2-prerelease+meta",
    "1.1.2+meta-valid",
    "1.0.0-alpha.beta.1",
    "1.0.0-alpha.0valid",
    "1.0.0-rc.1+build.1",
    "2.0.0-rc.1+build.123",
    "1.0.0+0.build.1-rc.10000aaa-kk-0.1",
    "1.0.0-0A.is.legal",
    "99999999999999999999999.999999999999999999.99999999999999999",
]
INVALID = [
    "1",
    "1.2",
    "1.2.3.4",
    "v1.2.3",
    "01.1.1",
    "1.02.3",
    "1.2.3-0123",
    "1.2.3-",
    "1.2.3+",
    "1.2.3-alpha..1",
    "1.2.3-alpha_beta",
    "1.2.3 ",
    "+invalid",
    "alpha",
]


@pytest.mark.parametrize("version", VALID)
def test_valid_versions_pass_both_regex_engines(version: str) -> None:
    assert re.fullmatch(SEMVER, version)
    spec = FineTuneSpec.model_validate(
        {"baseModel": {"uri": "pvc://m/base"}, "dataset": {"uri": "pvc://m/d"}, "version": version}
    )
    assert spec.version == version


@pytest.mark.parametrize("version", INVALID)
def test_invalid_versions_are_refused_naming_the_field(version: str) -> None:
    assert not re.fullmatch(SEMVER, version)
    with pytest.raises(ValidationError) as exc:
        FineTuneSpec.model_validate(
            {
                "baseModel": {"uri": "pvc://m/base"},
                "dataset": {"uri": "pvc://m/d"},
                "version": version,
            }
        )
    assert exc.value.errors()[0]["loc"] == ("version",)
