"""Item: your own documents while serving. A file added, changed or deleted in the folder, or put
straight into the local bucket, is indexed through S3 → SQS → the indexer within seconds, with one
line per file; the chat then answers from it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import boto3
import httpx

from local.watch import Change, diff, snapshot
from tests.local_stack.conftest import Served


def test_diff_names_new_changed_and_deleted_files_and_ignores_hidden_ones(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / "notes.md~").write_text("backup")
    first = snapshot(tmp_path)
    assert set(first) == {"a.md", "sub/b.txt"}
    assert diff({}, first) == [Change("put", "a.md"), Change("put", "sub/b.txt")]

    (tmp_path / "a.md").write_text("a, longer now")
    os.utime(tmp_path / "sub" / "b.txt", ns=(1, 1))  # same size, other mtime: changed too
    (tmp_path / "c.md").write_text("c")
    second = snapshot(tmp_path)
    assert diff(first, second) == [Change("put", "a.md"), Change("put", "c.md"), Change("put", "sub/b.txt")]
    (tmp_path / "a.md").unlink()
    assert diff(second, snapshot(tmp_path)) == [Change("delete", "a.md")]
    assert diff(second, second) == []


def _wait_line(served: Served, fragment: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(served.lines):
            if fragment in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no line with {fragment!r} within {timeout} s:\n" + "\n".join(served.lines[-20:]))


def _answer(served: Served, question: str) -> dict[str, object]:
    r = httpx.post(
        f"{served.stack.chat_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {served.stack.token}"},
        json={"messages": [{"role": "user", "content": question}], "filter": {"key_prefix": "samples/"}},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_a_file_added_changed_and_deleted_in_the_folder_is_indexed_while_serving(served: Served) -> None:
    path = served.docs / "parking.md"
    path.write_text("# Parking\n\nVisitors park free. Staff park on level minus two with a badge.\n")
    line = _wait_line(served, "indexed   samples/parking.md: 1 chunks")
    assert "embedded" in line
    sources = _answer(served, "Where does staff park with a badge?")["sources"]
    assert any(s["source_key"] == "samples/parking.md" for s in sources)  # type: ignore[attr-defined]

    served.lines.clear()
    path.write_text("# Parking\n\nVisitors park free. Staff park on level minus three with a badge since May.\n")
    _wait_line(served, "indexed   samples/parking.md: 1 chunks")
    answer = _answer(served, "Where does staff park with a badge?")
    assert "minus three" in str(answer["choices"])

    served.lines.clear()
    path.unlink()
    _wait_line(served, "removed   samples/parking.md: 1 chunks")
    sources = _answer(served, "Where does staff park with a badge?")["sources"]
    assert all(s["source_key"] != "samples/parking.md" for s in sources)  # type: ignore[attr-defined]


def test_an_object_copied_to_the_local_bucket_is_indexed(served: Served) -> None:
    # what `aws s3 cp FILE s3://qwen-rag-documents/docs/ --endpoint-url ...` does
    s3 = boto3.client("s3", endpoint_url=served.stack.env["AWS_ENDPOINT_URL"])
    s3.put_object(Bucket=served.stack.bucket, Key="docs/badges.txt", Body=b"Lost badges are replaced at reception.")
    _wait_line(served, "indexed   docs/badges.txt: 1 chunks")
    s3.put_object(Bucket=served.stack.bucket, Key="docs/blob.bin", Body=bytes(range(256)) * 4)
    assert "unsupported file type .bin" in _wait_line(served, "skipped   docs/blob.bin")
