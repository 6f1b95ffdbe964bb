"""The SRTP vectors meetd's Rust test checks itself against are libsrtp's output."""

from pathlib import Path

import srtp_vectors

VECTORS = Path(__file__).resolve().parents[2] / "colibri/src/media/testdata/libsrtp_vectors.txt"


def test_vectors_are_what_libsrtp_produces():
    kept = [line for line in VECTORS.read_text().splitlines() if line.strip()]
    assert kept == srtp_vectors.lines(), (
        "libsrtp disagrees with the kept vectors: regenerate with "
        "python3 tests/python/srtp_vectors.py > colibri/src/media/testdata/libsrtp_vectors.txt "
        "and see whether media::srtp::tests::matches_libsrtp still passes"
    )
