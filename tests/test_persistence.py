"""Saving and loading index folders (issue #12): what may be replaced, recovery of interrupted saves,
validation of every loaded file, checksums, and special files. Loads that used to crash Python run in a
child process (helpers/index_child.py), so a regression is reported instead of killing the test run."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.index_child import IndexChild
from helpers.saved_index import as_format_1, edit_array, edit_json, manifest, write_manifest
from retrieval import IndexFormatError, Retriever
from retrieval import persistence
from retrieval.cli import main
from retrieval.safe_files import open_regular

DOCS = [{"_id": f"d{i}", "title": "", "text": f"cat dog word{i} gene {'mouse' if i % 3 else 'human'}"}
        for i in range(12)]


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bm25") / "idx"
    Retriever.from_documents(DOCS, show_progress=False).save(folder)
    return folder


@pytest.fixture()
def idx(bm25_index: Path, tmp_path: Path) -> Path:
    """A fresh copy of the saved BM25 index for one test to damage."""
    return Path(shutil.copytree(bm25_index, tmp_path / "idx"))


@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory):
    proc = IndexChild(tmp_path_factory.mktemp("child") / "stderr.txt", timeout=60)
    yield proc
    proc.close()


def ids(retriever: Retriever, query: str = "cat gene") -> list[str]:
    return [h.id for h in retriever.retrieve(query, k=5)]


def refused(child: IndexChild, path: Path, file: str, verify: bool = True) -> str:
    """Load ``path`` in the child; it must raise IndexFormatError naming ``file``. Returns the message."""
    answer = child.ask(path, verify=verify)
    assert "ours" in answer, answer
    assert answer["ours"][0] == "IndexFormatError" and file in answer["ours"][1], answer
    return answer["ours"][1]


# --- 1. what save() may replace ------------------------------------------------------------------

def test_save_refuses_a_folder_of_user_files(tmp_path: Path) -> None:
    user = tmp_path / "project"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    r = Retriever.from_documents(DOCS, show_progress=False)
    with pytest.raises(IndexFormatError, match="not a retrievekit index.*refusing"):
        r.save(user)
    assert (user / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]   # no temp folder left either
    (user / "manifest.json").write_text(json.dumps({"kind": "dense", "format_version": 1}))
    with pytest.raises(IndexFormatError, match="does not say kind 'retriever'"):
        r.save(user)


def test_save_refuses_the_current_folder_and_its_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "a" / "work"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("keep")
    monkeypatch.chdir(work)
    r = Retriever.from_documents(DOCS, show_progress=False)
    for target in (".", "..", str(work), str(tmp_path / "a"), "./"):
        with pytest.raises(IndexFormatError, match="current folder or one of its parents"):
            r.save(target)
    assert (work / "notes.txt").read_text() == "keep"
    r.save("sub/idx")                                  # a new folder below the current one is fine
    assert len(Retriever.load(work / "sub" / "idx")) == len(DOCS)


def test_save_refuses_targets_inside_or_around_the_loaded_index(idx: Path, tmp_path: Path) -> None:
    loaded = Retriever.load(idx)
    with pytest.raises(IndexFormatError, match="lies inside the index being read"):
        loaded.save(idx / "stage")
    with pytest.raises(IndexFormatError, match="lies inside the index being read"):
        loaded.save(idx / "stage" / "new")
    with pytest.raises(IndexFormatError, match="contains the index being read"):
        loaded.save(tmp_path)
    assert ids(Retriever.load(idx)) == ids(loaded)            # nothing was touched
    fresh = Retriever.from_documents(DOCS[:3], show_progress=False)
    with pytest.raises(IndexFormatError, match="not a retrievekit index"):
        fresh.save(idx / "stage")                            # another retriever cannot clobber it either


def test_save_replaces_an_index_an_empty_folder_and_itself(idx: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    Retriever.from_documents(DOCS[:3], show_progress=False).save(empty)
    assert len(Retriever.load(empty)) == 3
    Retriever.from_documents(DOCS[:5], show_progress=False).save(empty)   # an index is replaced
    assert len(Retriever.load(empty)) == 5
    loaded = Retriever.load(idx)
    loaded.add([{"_id": "new", "text": "lions roar"}])
    loaded.save(idx)                                          # load, add, save back in place
    assert ids(Retriever.load(idx), "lions") == ["new"]
    assert ids(loaded, "cat") == ids(Retriever.load(idx), "cat")   # the old mmap still reads right


def test_save_refuses_an_index_holding_foreign_files_and_a_plain_file(idx: Path, tmp_path: Path) -> None:
    (idx / "my-notes.md").write_text("mine")
    r = Retriever.from_documents(DOCS[:2], show_progress=False)
    with pytest.raises(IndexFormatError, match="my-notes.md.*did not write"):
        r.save(idx)
    assert (idx / "my-notes.md").exists() and len(Retriever.load(idx)) == len(DOCS)
    (tmp_path / "file").write_text("x")
    with pytest.raises(IndexFormatError, match="not a folder"):
        r.save(tmp_path / "file")


def test_cli_index_refuses_a_user_folder_before_building(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    user = tmp_path / "mine"
    user.mkdir()
    (user / "a.txt").write_text("a")
    assert main(["index", str(docs), "--out", str(user), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not a retrievekit index" in err.strip().splitlines()[-1]
    assert [p.name for p in user.iterdir()] == ["a.txt"]
    assert main(["index", str(docs), "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    assert main(["index", str(docs), "--out", str(tmp_path / "idx"), "--quiet"]) == 0   # re-index in place


# --- 2. recoverable replacement ------------------------------------------------------------------

class Killed(BaseException):
    """Stands in for SIGKILL inside the process (a BaseException, so no cleanup handler swallows it)."""


def interrupt_rename(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """Make the ``at``-th os.rename of a save raise Killed before renaming."""
    calls = {"n": 0}
    real = os.rename

    def rename(src, dst):
        calls["n"] += 1
        if calls["n"] == at:
            raise Killed()
        return real(src, dst)

    monkeypatch.setattr(persistence.os, "rename", rename)


def test_a_save_cut_between_the_two_renames_is_finished_by_the_next_load(idx: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    new = Retriever.from_documents(DOCS[:4], show_progress=False)
    interrupt_rename(monkeypatch, 2)                 # old -> .idx.old-*, then cut before new -> idx
    with pytest.raises(Killed):
        new.save(idx)
    monkeypatch.undo()
    assert not idx.exists() and (idx.parent / ".idx.swap.json").exists()
    assert len(Retriever.load(idx)) == 4             # forward: the new folder was complete
    assert sorted(p.name for p in idx.parent.iterdir()) == ["idx"]


def test_a_save_cut_before_the_renames_keeps_the_old_index(idx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    interrupt_rename(monkeypatch, 1)                 # journal written, nothing renamed yet
    with pytest.raises(Killed):
        Retriever.from_documents(DOCS[:4], show_progress=False).save(idx)
    monkeypatch.undo()
    assert len(Retriever.load(idx)) == len(DOCS)
    assert sorted(p.name for p in idx.parent.iterdir()) == ["idx"]


def test_rollback_when_the_new_folder_is_gone(idx: Path) -> None:
    old = idx.parent / ".idx.old-0123456789abcdef"
    os.rename(idx, old)
    (idx.parent / ".idx.swap.json").write_text(json.dumps({"old": old.name, "new": ".idx.tmp-fedcba9876543210"}))
    assert len(Retriever.load(idx)) == len(DOCS)
    assert sorted(p.name for p in idx.parent.iterdir()) == ["idx"]


def test_a_journal_naming_foreign_folders_is_refused(idx: Path) -> None:
    (idx.parent / "precious").mkdir()
    (idx.parent / ".idx.swap.json").write_text(json.dumps({"old": "precious", "new": "precious"}))
    with pytest.raises(IndexFormatError, match="not ours"):
        Retriever.load(idx)
    assert (idx.parent / "precious").is_dir()


def test_leftovers_are_cleaned_by_the_next_save_and_load(idx: Path) -> None:
    parent = idx.parent
    ours = [".idx.tmp-0123456789abcdef", ".idx.old-0123456789abcdef", ".idx.tmp-ab12_x9z"]   # last: older releases
    for name in ours:
        (parent / name / "stage").mkdir(parents=True)
        (parent / name / "stage" / "big.npy").write_bytes(b"\0" * 1000)
    (parent / ".idx.tmp-0123456789abcdef.journalab12cd34").write_text("{")
    others = [".idx.tmp-notours-at-all", ".idx2.tmp-0123456789abcdef", "idx.tmp-0123456789abcdef", ".other"]
    for name in others:
        (parent / name).mkdir()
    Retriever.load(idx)
    assert sorted(p.name for p in parent.iterdir()) == sorted(["idx", *others])
    (parent / ours[0]).mkdir()
    Retriever.load(idx).save(idx)
    assert sorted(p.name for p in parent.iterdir()) == sorted(["idx", *others])


def test_a_live_writers_temp_folder_is_not_cleaned(idx: Path) -> None:
    live = idx.parent / ".idx.tmp-0123456789abcdef"
    live.mkdir()
    with persistence._locked(live):
        persistence.recover(idx)
        assert live.is_dir()
    persistence.recover(idx)
    assert not live.exists()


def test_an_old_release_interrupted_between_renames_is_restored(idx: Path) -> None:
    legacy = idx.parent / ".idx.old-k3j4h5g6"
    legacy.mkdir()
    os.rename(idx, legacy / "x")
    assert len(Retriever.load(idx)) == len(DOCS)
    assert sorted(p.name for p in idx.parent.iterdir()) == ["idx"]


def test_renames_are_made_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    real = persistence.fsync_dir
    monkeypatch.setattr(persistence, "fsync_dir", lambda folder: (synced.append(Path(folder)), real(folder)))
    r = Retriever.from_documents(DOCS, show_progress=False)
    r.save(tmp_path / "idx")
    assert tmp_path in synced and any(p.name.startswith(".idx.tmp-") for p in synced)
    synced.clear()
    r.save(tmp_path / "idx")                       # replacing: journal, renames, journal removal
    assert synced.count(tmp_path) >= 3


# --- 3. every loaded array is checked (these used to segfault) -----------------------------------

@pytest.mark.parametrize("verify", [True, False])
def test_damaged_bm25_arrays_raise_naming_the_file(child: IndexChild, bm25_index: Path, tmp_path: Path,
                                                   verify: bool) -> None:
    cases = {
        "tf_indices.npy": lambda a: np.where(np.arange(len(a)) == 3, 10 ** 6, a),     # out of the vocabulary
        "tf_indptr.npy": lambda a: a[:-2],                                            # rows vanish
        "tf_data.npy": lambda a: a.astype(np.float64) * np.nan,
    }
    for name, change in cases.items():
        folder = Path(shutil.copytree(bm25_index, tmp_path / f"{name}-{verify}"))
        edit_array(folder / "stage" / name, change)
        if not verify:
            as_format_1(folder)
        refused(child, folder, name, verify=verify)
    folder = Path(shutil.copytree(bm25_index, tmp_path / f"vocab-{verify}"))
    edit_json(folder / "stage" / "vocab.json", lambda v: v[:3])                       # shorter than the matrix
    if not verify:
        as_format_1(folder)
    refused(child, folder, "vocab.json", verify=verify)


@pytest.mark.parametrize("name, change, why", [
    ("tf_indices.npy", lambda a: a.astype(np.float32), "integer"),
    ("tf_indices.npy", lambda a: -a - 1, r"\[0, "),
    ("tf_indices.npy", lambda a: a[::-1].copy(), "increase within each row"),
    ("tf_indptr.npy", lambda a: a.reshape(1, -1), "1-D"),
    ("tf_indptr.npy", lambda a: a + 1, "grow from 0"),
    ("tf_indptr.npy", lambda a: np.r_[a[:1], a[2:3], a[1:2], a[3:]], "grow from 0"),
    ("tf_data.npy", lambda a: a[:-1], "values for"),
    ("tf_data.npy", lambda a: a.astype(np.float16), "float16"),
    ("doc_offsets.npy", lambda a: a[:-1], "offsets"),
    ("doc_offsets.npy", lambda a: a * 2, "offsets run"),
])
def test_structural_checks_without_checksums(idx: Path, name: str, change, why: str) -> None:
    path = idx / name if name.startswith("doc_") else idx / "stage" / name
    edit_array(path, change)
    as_format_1(idx)
    with pytest.raises(IndexFormatError, match=why) as err:
        Retriever.load(idx)
    assert name in str(err.value)


def test_garbage_npy_and_json_name_the_file(idx: Path) -> None:
    as_format_1(idx)
    for rel, data in [("stage/tf_data.npy", b"\x93NUMPY\x01\x00{'descr': '<i4', 'fortran_order': Fal"),
                      ("stage/tf_indptr.npy", b"not numpy at all"),
                      ("doc_offsets.npy", np.lib.format.magic(1, 0) + b"\x20\x00{'descr': '|O', 'fortran_order': "
                       b"False, 'shape': (3,), }     \n"),
                      ("doc_ids.json", b"[\"d0\", "), ("stage/vocab.json", b"\xff\xfe")]:
        folder = Path(shutil.copytree(idx, idx.parent / rel.replace("/", "_")))
        (folder / rel).write_bytes(data)
        with pytest.raises(IndexFormatError) as err:
            Retriever.load(folder)
        assert str(folder / rel) in str(err.value)


def test_a_huge_shape_in_a_npy_header_allocates_nothing(idx: Path) -> None:
    as_format_1(idx)
    path = idx / "stage" / "tf_data.npy"
    data = path.read_bytes().replace(f"({len(np.load(path))},)".encode(), b"(999999999999,)".ljust(12))
    path.write_bytes(data)
    with pytest.raises(IndexFormatError, match="tf_data.npy.*truncated or damaged"):
        Retriever.load(idx)


# --- 4. checksums, row counts, duplicates, manifest keys -----------------------------------------

def test_manifest_records_checksums_and_rows(bm25_index: Path) -> None:
    files = manifest(bm25_index)["files"]
    assert set(files) == {"docs.jsonl", "doc_offsets.npy", "doc_ids.json", "stage/tf_data.npy",
                          "stage/tf_indices.npy", "stage/tf_indptr.npy", "stage/vocab.json"}
    assert files["docs.jsonl"]["rows"] == files["doc_ids.json"]["rows"] == len(DOCS)
    assert files["doc_offsets.npy"]["rows"] == files["stage/tf_indptr.npy"]["rows"] == len(DOCS) + 1
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in files.values())


def test_a_shortened_indptr_and_reordered_doc_ids_are_caught(idx: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(idx, tmp_path / "other"))
    edit_array(idx / "stage" / "tf_indptr.npy", lambda a: a[:-1])
    with pytest.raises(IndexFormatError, match="tf_indptr.npy"):
        Retriever.load(idx)
    edit_json(other / "doc_ids.json", lambda v: [v[1], v[0], *v[2:]])
    with pytest.raises(IndexFormatError, match="doc_ids.json.*SHA-256"):
        Retriever.load(other)
    as_format_1(other)                              # no checksums: each line's _id is compared instead
    with pytest.raises(IndexFormatError, match="docs.jsonl line 1: does not hold id 'd1'"):
        Retriever.load(other)


def test_the_checksum_equals_rows_when_an_entry_is_edited_consistently(idx: Path) -> None:
    data = manifest(idx)
    data["files"]["stage/tf_indptr.npy"]["rows"] = 3
    write_manifest(idx, data)
    with pytest.raises(IndexFormatError, match="tf_indptr.npy: 13 rows, the manifest says 3"):
        Retriever.load(idx)


def test_duplicates_in_doc_ids_and_vocab_are_refused(idx: Path, tmp_path: Path) -> None:
    as_format_1(idx)
    other = Path(shutil.copytree(idx, tmp_path / "other"))
    edit_json(idx / "doc_ids.json", lambda v: [v[0], *v[:-1]])
    with pytest.raises(IndexFormatError, match=r"doc_ids.json: document id 'd0' appears twice \(entries 0 and 1\)"):
        Retriever.load(idx)
    edit_json(other / "stage" / "vocab.json", lambda v: [v[1], *v[1:]])
    with pytest.raises(IndexFormatError, match="vocab.json: term .* appears twice"):
        Retriever.load(other)


@pytest.mark.parametrize("version", [True, "1", 1.0, None, 0])
def test_format_version_must_be_a_real_int(idx: Path, version) -> None:
    data = manifest(idx)
    data["format_version"] = version
    write_manifest(idx, data)
    with pytest.raises(IndexFormatError, match="format_version must be a positive int"):
        Retriever.load(idx)


@pytest.mark.parametrize("key", ["stage", "method", "n_docs", "files"])
def test_a_missing_manifest_key_is_an_index_format_error(idx: Path, key: str) -> None:
    data = manifest(idx)
    del data[key]
    write_manifest(idx, data)
    with pytest.raises(IndexFormatError, match=f"manifest.json: missing key '{key}'"):
        Retriever.load(idx)


@pytest.mark.parametrize("bad", [{"../../etc/passwd": {"bytes": 1, "sha256": "0" * 64}},
                                 {"docs.jsonl": {"bytes": "1", "sha256": "0"}}, ["docs.jsonl"]])
def test_a_bad_files_table_is_refused(idx: Path, bad) -> None:
    data = manifest(idx)
    data["files"] = bad
    write_manifest(idx, data)
    with pytest.raises(IndexFormatError, match="files"):
        Retriever.load(idx)


def test_a_file_missing_from_the_table_is_refused(idx: Path) -> None:
    data = manifest(idx)
    del data["files"]["stage/vocab.json"]
    write_manifest(idx, data)
    with pytest.raises(IndexFormatError, match="vocab.json: not listed in"):
        Retriever.load(idx)


def test_format_1_indexes_still_load_with_the_same_results(idx: Path) -> None:
    before = Retriever.load(idx).run({"q": "cat gene mouse"}, k=5)
    as_format_1(idx)
    assert Retriever.load(idx).run({"q": "cat gene mouse"}, k=5) == before
    Retriever.load(idx).save(idx)                              # saving upgrades it
    assert manifest(idx)["format_version"] == 2 and "files" in manifest(idx)


def test_damaged_faiss_and_dense_parts_name_the_file(tiny_bi_encoder, tmp_path: Path) -> None:
    r = Retriever.from_documents(DOCS, method="dense", encoder=tiny_bi_encoder, index="flat", show_progress=False)
    base = tmp_path / "dense"
    r.save(base)
    edits = {
        "index.faiss": lambda p: p.write_bytes(p.read_bytes()[:100]),
        "faiss_ids.npy": lambda p: edit_array(p, lambda a: a[::-1].copy()),
        "removed.npy": lambda p: edit_array(p, lambda a: np.array([0], dtype=np.int64)),
        "doc_ids.json": lambda p: edit_json(p, lambda v: v[:-1]),
    }
    for name, edit in edits.items():
        for verify in (True, False):
            folder = Path(shutil.copytree(base, tmp_path / f"{name}-{verify}"))
            edit(folder / "stage" / name)
            if not verify:
                as_format_1(folder)
            with pytest.raises(IndexFormatError) as err:
                Retriever.load(folder, encoder=tiny_bi_encoder)
            assert name in str(err.value), err.value
    folder = Path(shutil.copytree(base, tmp_path / "reordered"))
    edit_json(folder / "stage" / "doc_ids.json", lambda v: [v[1], v[0], *v[2:]])
    as_format_1(folder)
    with pytest.raises(IndexFormatError, match="another order"):
        Retriever.load(folder, encoder=tiny_bi_encoder)


def test_missing_keys_in_stage_manifests_are_index_format_errors(tiny_bi_encoder, tmp_path: Path) -> None:
    r = Retriever.from_documents(DOCS, method="hybrid", encoder=tiny_bi_encoder, index="flat", show_progress=False)
    base = tmp_path / "hybrid"
    r.save(base)
    for where, drop in [("stage/manifest.json", ("encoder", "normalize")), ("stage/manifest.json", ("next_id",)),
                        ("manifest.json", ("stage", "fusion")), ("manifest.json", ("stage", "bm25", "bm25"))]:
        folder = Path(shutil.copytree(base, tmp_path / "-".join(drop)))
        path = folder / where.replace("stage/", "stage/dense/")
        data = json.loads(path.read_text())
        entry = data
        for key in drop[:-1]:
            entry = entry[key]
        del entry[drop[-1]]
        path.write_text(json.dumps(data))
        with pytest.raises(IndexFormatError, match=f"{path}: .*(miss|must hold|bad BM25 stage config)"):
            Retriever.load(folder, encoder=tiny_bi_encoder, verify=False)


# --- 5. only regular files inside the folder -----------------------------------------------------

def test_a_fifo_in_place_of_vocab_does_not_block(child: IndexChild, bm25_index: Path, tmp_path: Path) -> None:
    for verify in (True, False):
        folder = Path(shutil.copytree(bm25_index, tmp_path / f"fifo-{verify}"))
        (folder / "stage" / "vocab.json").unlink()
        os.mkfifo(folder / "stage" / "vocab.json")
        if not verify:
            as_format_1(folder)
        refused(child, folder, "vocab.json", verify=verify)
    with pytest.raises(IndexFormatError, match="not a regular file"):
        os.close(open_regular(folder / "stage" / "vocab.json"))


def test_symlinks_are_refused(child: IndexChild, bm25_index: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(bm25_index / "stage", outside)
    for name, target in [("zero", Path("/dev/zero")), ("out", outside / "vocab.json")]:
        folder = Path(shutil.copytree(bm25_index, tmp_path / name))
        (folder / "stage" / "vocab.json").unlink()
        (folder / "stage" / "vocab.json").symlink_to(target)
        message = refused(child, folder, "vocab.json")
        assert "symbolic link" in message
        with pytest.raises(IndexFormatError, match="symbolic link"):
            open_regular(folder / "stage" / "vocab.json")
    folder = Path(shutil.copytree(bm25_index, tmp_path / "stage-link"))
    shutil.rmtree(folder / "stage")
    (folder / "stage").symlink_to(outside, target_is_directory=True)
    assert "symbolic link" in refused(child, folder, "stage")


def test_an_index_reached_through_a_symlink_loads(bm25_index: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(bm25_index, target_is_directory=True)
    assert len(Retriever.load(tmp_path / "link")) == len(DOCS)


def test_atomic_file_refuses_a_folder_before_writing(tmp_path) -> None:
    """The rename over a folder failed only after the whole file was written, naming the temp file."""
    from retrieval.persistence import atomic_file

    with pytest.raises(IsADirectoryError, match="is a folder; a file path is needed here"):
        with atomic_file(tmp_path) as fh:
            fh.write("never")
    assert list(tmp_path.iterdir()) == [] and not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))
