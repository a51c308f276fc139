"""containerd's filter syntax: parsing, quoting, AND within a string, OR across strings."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from lazyimage.snapshotter import InvalidSnapshotError, Kind, SnapshotInfo
from lazyimage.snapshotter._filters import Selector, parse_filters


def _info(name: str, kind: Kind, parent: str = "", **labels: str) -> SnapshotInfo:
    return SnapshotInfo(name, kind, parent, labels=labels)


def _names(infos: Sequence[SnapshotInfo], *filters: str) -> list[str]:
    selected = parse_filters(filters)
    return sorted(i.name for i in infos if selected.matches(i.field))


# The snapshots and filters of containerd's testsuite checkWalk.
_ROOT = "containerd.io/gc.root"
_WALK = [
    _info("a-np", Kind.ACTIVE, **{_ROOT: "check-walk"}),
    _info("p", Kind.COMMITTED, **{_ROOT: "check-walk"}),
    _info("a", Kind.ACTIVE, "p", **{_ROOT: "check-walk"}),
    _info("v", Kind.VIEW, "p", **{_ROOT: "check-walk"}),
    _info("p-wl", Kind.COMMITTED, l="1", **{_ROOT: "check-walk"}),
    _info("a-wl", Kind.ACTIVE, "p-wl", l="2", **{_ROOT: "check-walk"}),
    _info("v-wl", Kind.VIEW, "p-wl", l="3", **{_ROOT: "check-walk"}),
    _info("a-np-wl", Kind.ACTIVE, l="2", **{_ROOT: "check-walk"}),
    _info("unrelated", Kind.COMMITTED),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (
            ['labels."containerd.io/gc.root"==check-walk'],
            ["a", "a-np", "a-np-wl", "a-wl", "p", "p-wl", "v", "v-wl"],
        ),
        (
            ['kind==active,labels."containerd.io/gc.root"==check-walk'],
            ["a", "a-np", "a-np-wl", "a-wl"],
        ),
        (['kind==view,labels."containerd.io/gc.root"==check-walk'], ["v", "v-wl"]),
        (['kind==committed,labels."containerd.io/gc.root"==check-walk'], ["p", "p-wl"]),
        (["name==p", "name==a-np-wl"], ["a-np-wl", "p"]),
        (["name==a-wl,labels.l"], ["a-wl"]),
        (["parent==p"], ["a", "v"]),
        (['parent!="",labels."containerd.io/gc.root"==check-walk'], ["a", "a-wl", "v", "v-wl"]),
        (["labels.l"], ["a-np-wl", "a-wl", "p-wl", "v-wl"]),
        (["labels.l==2"], ["a-np-wl", "a-wl"]),
        ([], [i.name for i in _WALK]),
        ([""], [i.name for i in _WALK]),
        (["name==nothing", ""], [i.name for i in _WALK]),  # "" is always true, in an OR
        (["name~=^a-"], ["a-np", "a-np-wl", "a-wl"]),
        (["name~=/wl$/"], ["a-np-wl", "a-wl", "p-wl", "v-wl"]),
        (["name~=|^p|"], ["p", "p-wl"]),
        (["labels.l!=2"], ["a", "a-np", "p", "p-wl", "unrelated", "v", "v-wl"]),
        (["  kind == view ,  parent == p "], ["v"]),
    ],
)
def test_containerd_walk_cases(filters: list[str], expected: list[str]) -> None:
    assert _names(_WALK, *filters) == sorted(expected)


@pytest.mark.timeout(10)
def test_remote_target_lookup_as_the_metadata_layer_sends_it() -> None:
    # containerd's metadata layer looks a remote target up with exactly this shape: an unquoted
    # chain id (with a colon) and a quoted, namespaced parent with a space and slashes in it.
    chain = "sha256:" + "ab" * 32
    parent = "k8s.io/12/extract-123 sha256:" + "cd" * 32
    infos = [
        _info(chain, Kind.COMMITTED, parent, **{"containerd.io/snapshot.ref": chain}),
        _info("other", Kind.COMMITTED, parent, **{"containerd.io/snapshot.ref": "x"}),
        _info(chain + "-child", Kind.ACTIVE, chain),
    ]
    expr = f'labels."containerd.io/snapshot.ref"=={chain},parent=="{parent}"'
    assert _names(infos, expr) == [chain]
    assert _names(infos, f'labels."containerd.io/snapshot.ref"=={chain},parent==""') == []


@pytest.mark.timeout(10)
def test_label_keys_with_dots_join_the_rest_of_the_path() -> None:
    infos = [_info("x", Kind.ACTIVE, **{"a.b.c": "1"}), _info("y", Kind.ACTIVE, a="1")]
    assert _names(infos, "labels.a.b.c==1") == ["x"]
    assert _names(infos, 'labels."a.b.c"') == ["x"]
    assert _names(infos, "labels.a") == ["y"]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("expression", "value"),
    [
        (r'name=="a\"b"', 'a"b'),
        (r'name=="tab\there"', "tab\there"),
        (r'name=="\\"', "\\"),
        (r'name=="\x41\101\u00e9\U0001F600"', "AAé😀"),
        ('name=="comma, and space"', "comma, and space"),
        ("name==a.b:c/d@e", "a.b:c/d@e"),
        ('name==ab"c', 'ab"c'),
    ],
)
def test_quoting_and_values(expression: str, value: str) -> None:
    (conj,) = parse_filters([expression]).alternatives
    assert conj == (Selector(("name",), "==", value),)


@pytest.mark.timeout(10)
def test_non_utf8_escapes_round_trip_as_surrogates() -> None:
    (conj,) = parse_filters([r'name=="\xff"']).alternatives
    assert conj[0].value.encode("utf-8", "surrogateescape") == b"\xff"


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "expression",
    [
        "name==",  # no value
        "name=",  # not an operator
        "name===x",
        "name<>x",
        "name==a,",  # empty selector
        ",name==a",
        "name==a b",  # a space ends a value; "b" is left over
        'name=="unterminated',
        'name=="bad \\q escape"',
        'name=="\\x4"',
        'name=="\\777"',
        "name==/not a regexp operator/",  # slash quotes only after ~=
        "labels.my-label",  # "-" is not a field character: quote the key
        "labels.",
        ".name",
        "name==.x",
        "name==a\0",
    ],
)
def test_malformed_filters_are_invalid_argument(expression: str) -> None:
    with pytest.raises(InvalidSnapshotError, match="parse error"):
        parse_filters(["kind==active", expression])


@pytest.mark.timeout(10)
def test_bad_regexp_matches_nothing_as_in_containerd() -> None:
    infos = [_info("x", Kind.ACTIVE)]
    assert _names(infos, "name~=[") == []
    assert _names(infos, "name~=[", "name==x") == ["x"]
