"""FileCatalogSource: sees added/removed/edited files quickly, keeps the last good catalog on a broken file."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from meshcore.catalog.files import FileCatalogSource
from meshcore.errors import CatalogError, ValidationError


def service(name: str, port: int, version: str = "v1", upstreams: list | None = None) -> dict:
    return {
        "service": {
            "name": name,
            "port": port,
            "meta": {"version": version},
            "connect": {"sidecar_service": {"proxy": {"upstreams": upstreams or []}}},
        }
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "vm1").mkdir()
    (tmp_path / "vm1" / "agent.hcl").write_text('node_name = "node-one"\nadvertise_addr = "10.0.0.11"\n')
    (tmp_path / "vm1" / "productpage.json").write_text(
        json.dumps(service("productpage", 9080, upstreams=[{"destination_name": "reviews", "local_bind_port": 9081}]))
    )
    (tmp_path / "vm2").mkdir()
    (tmp_path / "vm2" / "reviews.hcl").write_text(
        'advertise_addr = "10.0.0.12"\nservice {\n  name = "reviews"\n  port = 9080\n  meta = { version = "v1" }\n'
        "  connect { sidecar_service {} }\n}\n"
    )
    (tmp_path / "empty-dir").mkdir()
    return tmp_path


def later(delay: float, fn) -> threading.Timer:
    t = threading.Timer(delay, fn)
    t.start()
    return t


def test_initial_poll_returns_the_catalog(root):
    src = FileCatalogSource(root)
    update = src.poll(None, 30)
    assert update.index == 1
    assert [(n.name, n.address) for n in update.catalog.nodes] == [("node-one", "10.0.0.11"), ("vm2", "10.0.0.12")]
    pp = update.catalog.instances_of("productpage")[0]
    assert (pp.node, pp.mesh_address, pp.mesh_port, pp.healthy) == ("node-one", "10.0.0.11", 21000, True)
    assert [u.destination_name for u in pp.upstreams] == ["reviews"]
    assert src.errors == () and update.extra["errors"] == ()
    assert [n.name for n in src.definitions] == ["node-one", "vm2"]


def test_poll_without_change_waits_and_keeps_the_index(root):
    src = FileCatalogSource(root)
    first = src.poll(None, 0)
    start = time.monotonic()
    again = src.poll(first.index, 0.5)
    assert again.index == first.index and again.catalog == first.catalog
    assert time.monotonic() - start >= 0.45


def test_added_file_is_seen_within_two_seconds(root):
    src = FileCatalogSource(root)
    first = src.poll(None, 0)
    t = later(0.3, lambda: (root / "vm2" / "ratings.json").write_text(json.dumps(service("ratings", 9090))))
    start = time.monotonic()
    update = src.poll(first.index, 10)
    t.join()
    assert time.monotonic() - start < 2
    assert update.index == first.index + 1
    assert update.catalog.service_names() == ("productpage", "ratings", "reviews")


def test_removed_file_is_seen_within_two_seconds(root):
    src = FileCatalogSource(root)
    first = src.poll(None, 0)
    t = later(0.3, lambda: (root / "vm1" / "productpage.json").unlink())
    start = time.monotonic()
    update = src.poll(first.index, 10)
    t.join()
    assert time.monotonic() - start < 2
    assert update.catalog.service_names() == ("reviews",)
    assert update.catalog.node("node-one") is not None  # the node stays, without services


def test_edited_meta_is_seen_within_two_seconds(root):
    src = FileCatalogSource(root)
    first = src.poll(None, 0)
    f = root / "vm2" / "reviews.hcl"
    t = later(0.3, lambda: f.write_text(f.read_text().replace('version = "v1"', 'version = "v2"')))
    start = time.monotonic()
    update = src.poll(first.index, 10)
    t.join()
    assert time.monotonic() - start < 2
    assert update.catalog.instances_of("reviews")[0].labels["version"] == "v2"


def test_broken_file_keeps_the_last_good_catalog(root, caplog):
    src = FileCatalogSource(root)
    good = src.poll(None, 0)
    bad = service("productpage", 9080, upstreams=[{"destination_name": "reviews", "local_bind_port": 70000}])
    caplog.set_level(logging.ERROR, logger="meshcore.catalog.files")
    (root / "vm1" / "productpage.json").write_text(json.dumps(bad))
    (root / "vm2" / "ratings.json").write_text(json.dumps(service("ratings", 9090)))  # a valid change, held back too
    update = src.poll(good.index, 1.0)
    assert update.index == good.index and update.catalog == good.catalog
    assert [(e.source, e.path) for e in src.errors] == [
        ("vm1/productpage.json", "service.connect.sidecar_service.proxy.upstreams[0].local_bind_port")
    ]
    assert update.extra["errors"] == src.errors
    assert "source=vm1/productpage.json path=service.connect.sidecar_service.proxy.upstreams[0].local_bind_port" in caplog.text

    # fixing the file publishes everything that changed meanwhile, and clears the errors
    (root / "vm1" / "productpage.json").write_text(json.dumps(service("productpage", 9080)))
    fixed = src.poll(good.index, 10)
    assert fixed.index == good.index + 1 and src.errors == ()
    assert fixed.catalog.service_names() == ("productpage", "ratings", "reviews")


def test_no_good_catalog_yet_raises_validation_error(root):
    (root / "vm2" / "reviews.hcl").write_text("service {\n  name = \n}\n")
    src = FileCatalogSource(root)
    with pytest.raises(ValidationError) as exc:
        src.poll(None, 0)
    assert exc.value.errors[0].source == "vm2/reviews.hcl"
    assert "HCL syntax error at line 2" in exc.value.errors[0].message


def test_duplicate_node_names_are_an_error(root):
    (root / "vm2" / "agent.hcl").write_text('node_name = "node-one"\n')
    src = FileCatalogSource(root)
    with pytest.raises(ValidationError, match="node name 'node-one' is also used by directory 'vm1'"):
        src.poll(None, 0)


def test_missing_root_and_close(tmp_path):
    src = FileCatalogSource(tmp_path / "nope")
    with pytest.raises(ValidationError, match="catalog directory does not exist"):
        src.poll(None, 0)
    src.close()
    with pytest.raises(CatalogError):
        src.poll(None, 0)


def _many_nodes(root: Path, n: int) -> None:
    for i in range(n):
        d = root / f"node{i:03d}"
        d.mkdir()
        (d / "agent.hcl").write_text(f'advertise_addr = "10.1.{i // 250}.{i % 250 + 1}"\n')
        (d / "svc.json").write_text(json.dumps(service(f"svc{i}", 9000)))


def test_a_change_rereads_only_its_node_directory(root):
    _many_nodes(root, 50)
    src = FileCatalogSource(root)
    first = src.poll(None, 0)
    src.poll(first.index, 0)  # starts watching
    assert src.watching
    reads = src.reads
    t = later(0.2, lambda: (root / "node007" / "svc.json").write_text(json.dumps(service("svc7", 9000, "v2"))))
    update = src.poll(first.index, 10)
    t.join()
    assert update.index == first.index + 1
    assert update.catalog.instances_of("svc7")[0].labels["version"] == "v2"
    assert src.reads - reads == 1  # node007 alone was read again
    assert update.catalog.instances_of("svc8") == first.catalog.instances_of("svc8")


def test_new_and_removed_node_directories_are_noticed(root):
    src = FileCatalogSource(root)
    first = src.poll(None, 0)
    src.poll(first.index, 0)

    def add_node():
        (root / ".vm3").mkdir()  # hidden while it is being written, then renamed into place
        (root / ".vm3" / "agent.hcl").write_text('advertise_addr = "10.0.0.13"\n')
        (root / ".vm3" / "ratings.json").write_text(json.dumps(service("ratings", 9090)))
        (root / ".vm3").rename(root / "vm3")

    t = later(0.2, add_node)
    added = src.poll(first.index, 10)
    t.join()
    assert added.catalog.node("vm3") is not None and added.catalog.instances_of("ratings")
    t = later(0.2, lambda: [p.unlink() for p in (root / "vm3").iterdir()] and (root / "vm3").rmdir())
    removed = src.poll(added.index, 10)
    t.join()
    assert removed.catalog.node("vm3") is None


def test_an_idle_source_reads_nothing(root):
    src = FileCatalogSource(root)
    first = src.poll(None, 0)
    src.poll(first.index, 0)
    reads = src.reads
    cpu = time.process_time()
    again = src.poll(first.index, 1.0)  # sleeps on the inotify descriptor
    assert again.index == first.index and src.reads == reads
    assert time.process_time() - cpu < 0.2  # was a 200 ms rescan loop


def test_without_inotify_the_rescan_finds_changes(root):
    src = FileCatalogSource(root, poll_interval=0.1, use_inotify=False)
    first = src.poll(None, 0)
    t = later(0.2, lambda: (root / "vm2" / "ratings.json").write_text(json.dumps(service("ratings", 9090))))
    update = src.poll(first.index, 10)
    t.join()
    assert not src.watching
    assert update.catalog.service_names() == ("productpage", "ratings", "reviews")


def test_close_wakes_a_waiting_poll(root):
    src = FileCatalogSource(root)
    first = src.poll(None, 0)
    t = later(0.2, src.close)
    start = time.monotonic()
    update = src.poll(first.index, 30)
    t.join()
    assert update.index == first.index and time.monotonic() - start < 5


def test_changed_services_names_what_a_change_touched(root):
    src = FileCatalogSource(root)
    first = src.poll(None, 0)
    assert src.changed_services(None) is None
    src.poll(first.index, 0)
    t = later(0.2, lambda: (root / "vm2" / "reviews.hcl").write_text(
        (root / "vm2" / "reviews.hcl").read_text().replace('"v1"', '"v2"')))
    update = src.poll(first.index, 10)
    t.join()
    assert src.changed_services(first.index) == frozenset({"reviews"})
    assert src.changed_services(update.index) == frozenset()
    assert getattr(update, "changed_services", frozenset({"reviews"})) == frozenset({"reviews"})


def test_the_incremental_publish_equals_a_fresh_scan_after_random_changes(tmp_path: Path):
    """Each change is published in proportion to the directories it touched; after every one of a random
    sequence (services added, edited, removed; a broken file and its fix; a node name used twice and
    renamed; directories made and removed), the catalog and definitions equal a fresh source's full scan."""
    import random

    rng = random.Random(5)
    for n in range(6):
        (tmp_path / f"vm{n}").mkdir()
        (tmp_path / f"vm{n}" / "agent.hcl").write_text(f'node_name = "node{n}"\nadvertise_addr = "10.0.0.{n + 1}"\n')
    source = FileCatalogSource(tmp_path, rescan_interval=3600)
    index = source.poll(None, 0).index
    for step in range(60):
        n = rng.randrange(8)
        d = tmp_path / f"vm{n}"
        roll = rng.random()
        if not d.exists():
            d.mkdir()
            (d / "agent.hcl").write_text(f'node_name = "node{n}"\nadvertise_addr = "10.0.0.{n + 1}"\n')
        elif roll < 0.1:
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
        elif roll < 0.2:
            (d / "broken.json").write_text("{not json")
        elif roll < 0.3:
            (d / "agent.hcl").write_text(f'node_name = "node{rng.randrange(8)}"\nadvertise_addr = "10.0.0.{n + 1}"\n')
        else:
            (d / "broken.json").unlink(missing_ok=True)
            name = f"svc{rng.randrange(5)}"
            if rng.random() < 0.3 and (d / f"{name}.json").exists():
                (d / f"{name}.json").unlink()
            else:
                (d / f"{name}.json").write_text(json.dumps(service(name, 9000 + rng.randrange(3), f"v{rng.randrange(3)}")))
        deadline = time.monotonic() + 10
        fresh = FileCatalogSource(tmp_path, use_inotify=False)
        try:
            want = fresh.poll(None, 0)
        except ValidationError:
            want = None
        while True:
            try:
                got = source.poll(index, 0.05)
            except ValidationError:
                got = None
            matches = (want is None and source.errors) or (
                want is not None and got is not None and got.catalog == want.catalog and not source.errors)
            if matches or time.monotonic() > deadline:
                break
        assert matches, f"step {step}: the incremental catalog differs from a full scan"
        if want is not None:
            assert got is not None
            index = got.index
            assert source.definitions == fresh.definitions
