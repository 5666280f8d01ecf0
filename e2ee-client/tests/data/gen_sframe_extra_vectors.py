#!/usr/bin/env python3
"""Independent generator for extra SFrame (RFC 9605) vectors.

The official RFC 9605 vector file has a single `sframe` vector per cipher suite (KID 0x123,
CTR 0x4567). This script writes, in the same JSON schema, vectors with edge KID/CTR values
(0, 7, 8, 255, 256, 2^32, 2^64-1, ...), empty and multi-block plaintexts, metadata, and base
keys of several lengths, plus sender-key ratchet chains (RFC 9605 §5.1).

It shares no code with the Rust implementation: header encoding and the key schedule are
written from the RFC text here, HKDF/HMAC come from Python's standard library and AES from
the `cryptography` package. Both outputs are committed, so tests never need Python; rerun
only to regenerate:

    python3 e2ee-client/tests/data/gen_sframe_extra_vectors.py
"""

import hashlib
import hmac
import json
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE = os.path.dirname(os.path.abspath(__file__))
U64_MAX = (1 << 64) - 1

# id: (hash, Nk, Nt, kind)
SUITES = {
    1: (hashlib.sha256, 48, 10, "ctr"),
    2: (hashlib.sha256, 48, 8, "ctr"),
    3: (hashlib.sha256, 48, 4, "ctr"),
    4: (hashlib.sha256, 16, 16, "gcm"),
    5: (hashlib.sha512, 32, 16, "gcm"),
}
NN = 12


def hkdf_extract(h, salt, ikm):
    return hmac.new(salt, ikm, h).digest()


def hkdf_expand(h, prk, info, length):
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), h).digest()
        out += t
        i += 1
    return out[:length]


def encode_field(v):
    """(inline 3-bit value or None, extension bytes)."""
    if v < 8:
        return v, b""
    n = (v.bit_length() + 7) // 8
    return None, v.to_bytes(n, "big")


def encode_header(kid, ctr):
    k_inline, k_ext = encode_field(kid)
    c_inline, c_ext = encode_field(ctr)
    config = 0
    config |= (k_inline << 4) if k_ext == b"" else (0x80 | ((len(k_ext) - 1) << 4))
    config |= c_inline if c_ext == b"" else (0x08 | (len(c_ext) - 1))
    return bytes([config]) + k_ext + c_ext


def aead_encrypt(suite, key, nonce, aad, pt):
    h, nk, nt, kind = SUITES[suite]
    if kind == "gcm":
        return AESGCM(key).encrypt(nonce, pt, aad)
    enc_key, auth_key = key[:16], key[16:]
    enc = Cipher(algorithms.AES(enc_key), modes.CTR(nonce + b"\x00" * 4)).encryptor()
    ct = enc.update(pt) + enc.finalize()
    auth_data = (
        len(aad).to_bytes(8, "big")
        + len(ct).to_bytes(8, "big")
        + nt.to_bytes(8, "big")
        + nonce
        + aad
        + ct
    )
    tag = hmac.new(auth_key, auth_data, h).digest()[:nt]
    return ct + tag


def sframe_vector(suite, kid, ctr, base_key, metadata, pt):
    h, nk, nt, _ = SUITES[suite]
    secret = hkdf_extract(h, b"", base_key)
    suffix = kid.to_bytes(8, "big") + suite.to_bytes(2, "big")
    key_label = b"SFrame 1.0 Secret key " + suffix
    salt_label = b"SFrame 1.0 Secret salt " + suffix
    key = hkdf_expand(h, secret, key_label, nk)
    salt = hkdf_expand(h, secret, salt_label, NN)
    nonce = bytes(a ^ b for a, b in zip(salt, ctr.to_bytes(NN, "big")))
    header = encode_header(kid, ctr)
    aad = header + metadata
    ct = header + aead_encrypt(suite, key, nonce, aad, pt)
    return {
        "cipher_suite": suite,
        "kid": kid,
        "ctr": ctr,
        "base_key": base_key.hex(),
        "sframe_key_label": key_label.hex(),
        "sframe_salt_label": salt_label.hex(),
        "sframe_secret": secret.hex(),
        "sframe_key": key.hex(),
        "sframe_salt": salt.hex(),
        "metadata": metadata.hex(),
        "nonce": nonce.hex(),
        "header": header.hex(),
        "aad": aad.hex(),
        "pt": pt.hex(),
        "ct": ct.hex(),
    }


def ratchet(suite, base_key):
    h = SUITES[suite][0]
    return hkdf_expand(h, hkdf_extract(h, b"", base_key), b"SFrame 1.0 Ratchet", h().digest_size)


def det_bytes(seed, n):
    """Deterministic filler so the file is reproducible."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}/{i}".encode()).digest()
        i += 1
    return out[:n]


def main():
    kid_ctr = [
        (0, 0),
        (7, 7),
        (8, 8),
        (0, 255),
        (255, 0),
        (256, 256),
        (0x123, 0x4567),
        (1 << 32, (1 << 40) + 5),
        (U64_MAX, 0),
        (0, U64_MAX),
        (U64_MAX, U64_MAX),
        (U64_MAX - 1, U64_MAX - 1),
    ]
    pt_lens = [0, 1, 16, 33, 100, 1200]
    vectors = []
    n = 0
    for suite in SUITES:
        for i, (kid, ctr) in enumerate(kid_ctr):
            base_key = det_bytes(f"base-{suite}-{i}", [16, 32, 5, 64][i % 4])
            metadata = det_bytes(f"meta-{suite}-{i}", [0, 14, 3][i % 3])
            pt = det_bytes(f"pt-{suite}-{i}", pt_lens[n % len(pt_lens)])
            n += 1
            vectors.append(sframe_vector(suite, kid, ctr, base_key, metadata, pt))
    with open(os.path.join(HERE, "sframe-extra-vectors.json"), "w") as f:
        json.dump({"sframe": vectors}, f, indent=2)
        f.write("\n")

    # Ratchet chains: R = 4, key generation 5, base keys for steps 0..=3, and one frame
    # sealed at step 3 (KID = 5 << 4 | 3) that a receiver holding step 0 must open.
    chains = []
    for suite in SUITES:
        r_bits, generation = 4, 5
        keys = [det_bytes(f"ratchet-{suite}", 16)]
        for _ in range(3):
            keys.append(ratchet(suite, keys[-1]))
        kid = (generation << r_bits) | 3
        frame = sframe_vector(suite, kid, 9, keys[3], b"", b"ratchet step three")
        chains.append(
            {
                "cipher_suite": suite,
                "r_bits": r_bits,
                "generation": generation,
                "base_keys": [k.hex() for k in keys],
                "frame_at_step_3": {"kid": kid, "ctr": 9, "pt": frame["pt"], "ct": frame["ct"]},
            }
        )
    with open(os.path.join(HERE, "sframe-ratchet-vectors.json"), "w") as f:
        json.dump({"ratchet": chains}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
