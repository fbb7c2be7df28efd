"""wire/keys.py and `sealedos keys`: the layout, who may read what, and that a credential's
keypair is the one the kernel expects."""
from __future__ import annotations

import stat
from pathlib import Path

import yaml
import zmq
from zmq.utils import z85

from host_tools import keys_cmd
from wire import keys as wkeys
from wire.credential import new_credential, public_of

ROOT = Path(__file__).resolve().parents[1]


def test_sealedos_keys_makes_one_private_secret_per_principal(tmp_path: Path) -> None:
    assert keys_cmd.main(["--dir", str(tmp_path), "--pagers", "2"]) == 0
    principals = keys_cmd.principals_for(2)
    assert {"kernel", "launcher", "observer", "pager1", "disk1"} <= set(principals)
    publics = wkeys.load_publics(tmp_path)
    assert set(publics) == set(principals) and len(set(publics.values())) == len(principals)
    for p in principals:
        secret = wkeys.secret_path(tmp_path, p)
        assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700, p
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, p
        pair = wkeys.load_keypair(tmp_path, p)
        assert pair.public == publics[p] == zmq.curve_public(pair.secret)
    before = wkeys.load_publics(tmp_path)                  # a second run keeps them
    assert keys_cmd.main(["--dir", str(tmp_path), "--pagers", "2"]) == 0
    assert wkeys.load_publics(tmp_path) == before


def test_a_credential_is_its_own_curve_key() -> None:
    cred = new_credential()
    pair = wkeys.keypair_of_credential(cred)
    assert pair.public_text == public_of(cred)           # what the kernel binds at ADMIT
    assert zmq.curve_public(z85.encode(cred)) == pair.public


def test_a_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    for call in (lambda: wkeys.keyring(None, "pager0", False),
                 lambda: wkeys.keyring(tmp_path, "pager0", False)):
        try:
            call()
        except wkeys.KeysMissing as exc:
            assert "pager0" in str(exc) or "--keys" in str(exc)
        else:
            raise AssertionError("no error for a missing key")
    assert wkeys.keyring(None, "pager0", True).own is None   # --insecure needs none


def test_compose_keys_service_gives_each_container_only_its_own_secret() -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = doc["services"]
    assert "SEALEDOS_INIT_TOKEN" not in (ROOT / "deploy" / "docker-compose.yml").read_text()
    for name, svc in services.items():
        if name == "keys":
            continue
        assert svc.get("depends_on", {}).get("keys") == {
            "condition": "service_completed_successfully"}, name
        secrets = [v for v in svc.get("volumes", []) if ":/keys/priv/" in v]
        assert all(v.endswith(":ro") for v in secrets), name
        assert len(secrets) <= 1, (name, secrets)            # one principal per container
    for m in (0, 1):
        assert f"keys-pager{m}:/keys/priv/pager{m}:ro" in services[f"pager{m}"]["volumes"]
        assert f"keys-disk{m}:/keys/priv/disk{m}:ro" in services[f"disk{m}"]["volumes"]
