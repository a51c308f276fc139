"""LazyImage names: valid object names, one per image however it is spelled."""

from __future__ import annotations

import re

from lazyimage_operator.naming import canonical_image, lazyimage_name

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def test_names_are_valid_and_readable() -> None:
    name = lazyimage_name("Reg.Local:5000/Team/App:V1.2")
    assert _DNS1123_SUBDOMAIN.match(name), name
    assert len(name) <= 253
    assert name.startswith("reg.local-5000-team-app-v1.2-")


def test_two_spellings_of_one_image_share_a_name_and_two_images_do_not() -> None:
    assert lazyimage_name("nginx") == lazyimage_name("docker.io/library/nginx:latest")
    assert lazyimage_name("nginx:1") != lazyimage_name("nginx:1.0")
    # Characters that sanitising folds together still give different names.
    assert lazyimage_name("reg.local/a_b:1") != lazyimage_name("reg.local/a-b:1")


def test_long_references_are_cut_to_a_valid_length() -> None:
    name = lazyimage_name("reg.local/" + "x" * 400 + ":1")
    assert len(name) <= 253 and _DNS1123_SUBDOMAIN.match(name)


def test_unparsable_reference_is_kept_as_written() -> None:
    assert canonical_image("UPPER CASE!") == "UPPER CASE!"
    assert _DNS1123_SUBDOMAIN.match(lazyimage_name("UPPER CASE!"))
