"""Blobs shared by nodes and by sessions: corruption caught and healed, the shared store's reference counts.

A blob is named by its content, so the root and later nodes share most blobs (``logit_scale``,
every layer an op did not touch), and sessions of one base model share them through the data
home's store (hard links: the link count is the reference count).
"""

import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from rcc.cli.main import main
from rcc.compression.plan import CompressionPlan, Rule, plan_to_dict
from rcc.errors import RccError
from rcc.session import ops as O
from rcc.session.home import shared_store_root
from rcc.session.session import Session
from rcc.session.state import manifest_of
from rcc.session.store import TensorStore

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = "visual.transformer.resblocks.0.mlp.c_fc"
PLAN = CompressionPlan(rules=(Rule(kind="mlp_in", settings={"sparsity": 0.5}),))


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))  # in place: every link to this file sees it


def _blob_of(session: Session, node: int, name: str) -> str:
    return session.graph.state(node).tensors[name]


def test_a_corrupt_blob_shared_by_the_root_is_rewritten_before_a_new_node_uses_it(tmp_path, tiny_spec, capsys):
    directory = tmp_path / "s"
    with Session.create(directory, model=tiny_spec, device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(PLAN)))
        session.apply(O.RunStage(stage="dare", layers=(LAYER,)))  # node 2 shares logit_scale with the root
        digest = _blob_of(session, 1, "logit_scale")
        assert _blob_of(session, 2, "logit_scale") == digest
        path = session.store.path(digest)
    _flip_a_byte(path)
    assert main(["session", "apply", str(directory), '{"op": "run_stage", "stage": "dare", '
                 '"layers": ["transformer.resblocks.0.mlp.c_fc"]}', "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "corrupt" in line]
    assert len(warning) == 1 and digest[:12] in warning[0] and "logit_scale" in warning[0]
    assert "nodes using it: 1, 2, 3" in warning[0]
    with Session.open(directory, device="cpu", load=False) as session:
        assert _blob_of(session, 3, "logit_scale") == digest  # the new node names the blob, now whole again
        session.store.verify(digest, force=True)
        assert session.ops()[-1].result["healed_blobs"][0]["nodes"] == [1, 2]  # the earlier nodes
        for node in (1, 2, 3):  # every node that shares it checks out to its manifest again
            session.apply(O.Checkout(node=node))
            assert manifest_of(session.model.module)[1] == session.graph.state(node).tensors


def test_a_corrupt_shared_blob_that_cannot_be_healed_is_reported_with_every_node_using_it(tmp_path, tiny_spec):
    directory = tmp_path / "s"
    with Session.create(directory, model=tiny_spec, device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(PLAN)))
        session.apply(O.RunStage(stage="dare", layers=(LAYER,)))
        session.apply(O.RunStage(stage="dare", fraction=0.5, layers=("transformer.resblocks.0.mlp.c_fc",)))
        digest = _blob_of(session, 2, f"{LAYER}.weight")  # pruned by node 2, kept by node 3
        assert _blob_of(session, 3, f"{LAYER}.weight") == digest != _blob_of(session, 1, f"{LAYER}.weight")
    _flip_a_byte(Path(session.store.path(digest)))
    with Session.open(directory, device="cpu", load=False) as session:
        with pytest.raises(RccError) as refused:
            session.apply(O.Checkout(node=2))  # from the base model: the pruned weight comes from the store
        message = str(refused.value)
        session.apply(O.Checkout(node=1))  # the nodes that do not use it are intact
    assert digest[:12] in message and "corrupt" in message and f"{LAYER}.weight" in message
    assert "nodes using this blob: 2, 3" in message and "\n" not in message


def test_a_verified_blob_is_not_hashed_again_until_its_file_changes(tmp_path, monkeypatch):
    monkeypatch.setattr("rcc.session.store.RACY_SECONDS", 0.05)  # file times tick in ≤ 10 ms here
    store = TensorStore(tmp_path / "store")
    tensor = torch.arange(64, dtype=torch.float32)
    digest = store.put(tensor).hash
    path = store.path(digest)
    time.sleep(0.1)  # written a while ago...
    store.verify(digest, force=True)  # ...and hashed now: trusted from here on
    hashed = []
    real = store._check
    store._check = lambda *args: hashed.append(args[0]) or real(*args)
    assert torch.equal(store.get(digest), tensor) and hashed == []
    store.save_verified()
    again = TensorStore(tmp_path / "store")  # the records survive reopening
    again._check = lambda *args: hashed.append(args[0]) or real(*args)
    again.get(digest)
    assert hashed == []
    _flip_a_byte(path)  # any write changes the file's ctime: hashed again, caught
    with pytest.raises(RccError, match=f"{digest[:12]}.*corrupt"):
        again.get(digest)


def test_a_blob_changed_within_the_racy_window_is_never_trusted(tmp_path):
    store = TensorStore(tmp_path / "store")
    digest = store.put(torch.ones(32)).hash
    store.verify(digest, force=True)
    _flip_a_byte(store.path(digest))  # right after: the file's times may not have ticked
    with pytest.raises(RccError, match="corrupt"):
        store.get(digest)


def test_sessions_of_one_model_store_its_tensors_once(tmp_path, tiny_spec):
    first = Session.create(tmp_path / "a", model=tiny_spec, device="cpu")
    first.close()
    second = Session.create(tmp_path / "b", model=tiny_spec, device="cpu")
    second.close()
    shared = TensorStore(shared_store_root())
    hashes = first.store.all_hashes()
    assert hashes == second.store.all_hashes() == shared.all_hashes()
    for digest in hashes:  # one file on disk, three names: the shared store and both sessions
        inode = os.stat(shared.path(digest)).st_ino
        assert os.stat(first.store.path(digest)).st_ino == inode == os.stat(second.store.path(digest)).st_ino
        assert os.stat(shared.path(digest)).st_nlink == 3
    usage = Session.open(tmp_path / "b", read_only=True).disk_usage()
    blob_bytes = sum(os.stat(shared.path(d)).st_size for d in hashes)
    assert usage.shared == blob_bytes and usage.own < usage.total / 10  # the second session costs its database


def test_gc_and_deleting_a_session_never_remove_a_blob_another_session_uses(tmp_path, tiny_spec):
    with Session.create(tmp_path / "a", model=tiny_spec, device="cpu") as a:
        a.apply(O.SetPlan(plan=plan_to_dict(PLAN)))
        a.apply(O.RunStage(stage="dare", layers=(LAYER,)))
        only_a = set(a.graph.state(2).tensors.values()) - set(a.graph.state(1).tensors.values())
    with Session.create(tmp_path / "b", model=tiny_spec, device="cpu") as b:
        root = set(b.graph.state(1).tensors.values())
        assert not only_a & root
        report = b.gc()
        assert report.removed == 0 and report.shared_removed == 0  # a's blobs are a's: the shared store keeps them
    shared = TensorStore(shared_store_root())
    assert only_a <= shared.all_hashes()
    shutil.rmtree(tmp_path / "a")  # deleting a session: its links go, b's blobs stay
    with Session.open(tmp_path / "b", device="cpu") as b:
        report = b.gc()
        assert report.shared_removed == len(only_a)  # nobody links those any more
        assert shared.all_hashes() == root
        b.apply(O.Checkout(node=1))
        for digest in root:
            b.store.verify(digest, force=True)


def test_a_session_with_its_own_blobs_keeps_working_and_sharing_can_be_off(tmp_path, tiny_spec, monkeypatch):
    monkeypatch.setenv("RCC_SHARED_STORE", "off")
    with Session.create(tmp_path / "private", model=tiny_spec, device="cpu") as private:
        assert private.store.shared is None
        assert all(os.stat(private.store.path(d)).st_nlink == 1 for d in private.store.all_hashes())
    assert not (Path(os.environ["RCC_DATA_HOME"]) / "store" / "blobs").exists()
    monkeypatch.delenv("RCC_SHARED_STORE")
    with Session.open(tmp_path / "private", device="cpu") as reopened:  # a store from before sharing
        reopened.apply(O.SetPlan(plan=plan_to_dict(PLAN)))
        outcome = reopened.apply(O.RunStage(stage="dare", layers=(LAYER,)))
        new = set(reopened.graph.state(outcome.new_node).tensors.values()) - set(reopened.graph.state(1).tensors.values())
        assert new and new <= TensorStore(shared_store_root()).all_hashes()  # new blobs are shared from now on


def test_a_corrupt_blob_in_the_shared_store_is_never_linked_into_a_new_session(tmp_path, tiny_spec):
    Session.create(tmp_path / "a", model=tiny_spec, device="cpu").close()
    shared = TensorStore(shared_store_root())
    digest = sorted(shared.all_hashes())[0]
    _flip_a_byte(shared.path(digest))  # in place: session a's copy is the same file
    with Session.create(tmp_path / "b", model=tiny_spec, device="cpu") as b:
        b.store.verify(digest, force=True)  # b wrote its own copy from the model...
        assert os.stat(b.store.path(digest)).st_ino == os.stat(shared.path(digest)).st_ino
    shared.verify(digest, force=True)  # ...and the shared store now links that good copy
    with pytest.raises(RccError, match="corrupt"):
        TensorStore(tmp_path / "a" / "store").verify(digest, force=True)  # a's file is still the bad one
