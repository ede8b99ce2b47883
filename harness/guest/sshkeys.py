"""SSH keys of the reference guest: dropbear's host key file and OpenSSH public lines (ed25519), and
the client key root logs in with (made once in the cache)."""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

from harness.cache import atomic_write_bytes, cache_dir, file_lock
from harness.guest.recipe import ImageError

CLIENT_KEY_NAME = "id_ed25519"


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def openssh_public_line(public: bytes) -> str:
    """The OpenSSH public key line ("ssh-ed25519 AAAA...") of a raw 32-byte ed25519 public key."""
    blob = _ssh_string(b"ssh-ed25519") + _ssh_string(public)
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


def dropbear_host_key() -> tuple[bytes, str]:
    """A new ed25519 host key: (dropbear's key file bytes, OpenSSH public line).

    Dropbear's format (signkey.c/ed25519.c, buf_put_ed25519_priv_key): string "ssh-ed25519",
    uint32 64, then the 32-byte private seed followed by the 32-byte public key.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    seed, public = key.private_bytes_raw(), key.public_key().public_bytes_raw()
    return _ssh_string(b"ssh-ed25519") + struct.pack(">I", 64) + seed + public, openssh_public_line(public)


def client_public_key(path: Path) -> str:
    """The OpenSSH public line of the ed25519 private key file at `path`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ImageError(f"{path} is not a readable unencrypted OpenSSH private key ({exc}); delete it and "
                         "qabi makes a new one") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ImageError(f"{path} is not an ed25519 key; delete it and qabi makes a new one")
    return openssh_public_line(key.public_key().public_bytes_raw())


def client_key() -> Path:
    """The client's login key (ed25519, OpenSSH format, 0600, with a .pub), made once in the cache."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = cache_dir("ssh")
    os.chmod(directory, 0o700)
    path = directory / CLIENT_KEY_NAME
    pub = directory / f"{CLIENT_KEY_NAME}.pub"
    with file_lock(directory / f"{CLIENT_KEY_NAME}.lock"):
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            atomic_write_bytes(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()), 0o600)
        line = f"{client_public_key(path)} qabi-client\n"
        if not pub.is_file() or pub.read_text(errors="replace") != line:
            atomic_write_bytes(pub, line.encode(), 0o644)
    return path
