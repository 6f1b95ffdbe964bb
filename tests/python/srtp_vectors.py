"""SRTP/SRTCP test vectors from libsrtp (through pylibsrtp), for meetd's own SRTP.

`python3 tests/python/srtp_vectors.py` prints them; they are kept in
colibri/src/media/testdata/libsrtp_vectors.txt, which the Rust test
`media::srtp::tests::matches_libsrtp` reads (meetd must produce the same bytes and open
libsrtp's). test_srtp_vectors.py checks that the file is still what libsrtp produces.

Line format (hex fields):
  <profile> keys <client key|server key|client salt|server salt>
  <profile> rtp <index> <header> <payload> <srtp packet>      (protected with the server keys)
  <profile> rtcp <srtcp index> <rtcp packet> <srtcp packet>  (protected with the server keys)
"""

import pylibsrtp

PROFILES = [
    ("AES128_CM_SHA1_80", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
    ("AEAD_AES_128_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
    ("AEAD_AES_256_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32, 12),
]
SSRC = 0xCAFEBABE


def material(key_len: int, salt_len: int) -> bytes:
    n = 2 * key_len + 2 * salt_len
    return bytes((i * 29 + 11) & 0xFF for i in range(n))


def rtp_header(seq: int, ts: int) -> bytes:
    # V=2, X=1 with a one-byte-form extension (transport-cc, id 5), PT 100, marker on odd seqs.
    ext = bytes([0xBE, 0xDE, 0x00, 0x01, 0x51, (seq >> 8) & 0xFF, seq & 0xFF, 0x00])
    return (
        bytes([0x90, 0x64 | (0x80 if seq % 2 else 0)])
        + seq.to_bytes(2, "big")
        + ts.to_bytes(4, "big")
        + SSRC.to_bytes(4, "big")
        + ext
    )


def lines() -> list[str]:
    out = []
    for name, profile, kl, sl in PROFILES:
        m = material(kl, sl)
        server_key = m[kl : 2 * kl]
        server_salt = m[2 * kl + sl :]
        out.append(f"{name} keys {m.hex()}")
        policy = pylibsrtp.Policy(
            key=server_key + server_salt,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=profile,
        )
        session = pylibsrtp.Session(policy=policy)
        # Across a rollover of the sequence number.
        for k, seq in enumerate([65533, 65534, 65535, 0, 1, 2]):
            index = (65536 if seq < 100 else 0) + seq
            hdr = rtp_header(seq, 90000 + 3000 * k)
            payload = bytes((seq + j) & 0xFF for j in range(40 + 17 * k))
            srtp = session.protect(hdr + payload)
            out.append(f"{name} rtp {index} {hdr.hex()} {payload.hex()} {srtp.hex()}")
        for k in range(3):
            # A receiver report with one block, then a PLI (compound).
            rr = bytes([0x81, 201, 0, 7]) + (0x11223344).to_bytes(4, "big") + SSRC.to_bytes(4, "big")
            rr += bytes([k, 0, 0, 1]) + bytes(range(16))
            pli = bytes([0x81, 206, 0, 2]) + (0x11223344).to_bytes(4, "big") + SSRC.to_bytes(4, "big")
            plain = rr + pli
            srtcp = session.protect_rtcp(plain)
            # libsrtp numbers SRTCP packets from 1.
            out.append(f"{name} rtcp {k + 1} {plain.hex()} {srtcp.hex()}")
    return out


if __name__ == "__main__":
    print("\n".join(lines()))
