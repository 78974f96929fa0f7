import pytest

from meshcore.catalog._consul_settings import ConsulSettings
from meshcore.state import ConsulStateBackend, DirBackend


@pytest.fixture(params=["dir", "consul"])
def backend(request, tmp_path):
    """Each backend test runs on the state directory and on Consul KV (the double, or CONSUL_HTTP_ADDR)."""
    if request.param == "dir":
        b = DirBackend(tmp_path / "state")
    else:
        consul_http = request.getfixturevalue("consul_http")
        b = ConsulStateBackend(ConsulSettings.from_env(consul_http.env()), prefix=consul_http.kv_prefix + "state/")
    yield b
    b.close()
