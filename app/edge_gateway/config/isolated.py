"""The configuration read and validated in a child process, so the gateway's heap never holds it.

Reading five YAML files costs the process that does it PyYAML and jsonschema (about 9 MiB of imports),
the node tree of every file and the validation's garbage: a high-water mark the gateway would keep as
resident memory for as long as it runs. So the gateway (at start, on every reload, for every etcd
revision) runs

    python -m edge_gateway.config.isolated load DIR [BASE]     the Snapshot of DIR (loader.load_snapshot)
    python -m edge_gateway.config.isolated start DIR           the same, or the etcd source DIR's gateway.yml
                                                               names (config/bootstrap.py)

(no shell) and gets back, pickled on the child's stdout, the built and validated result or its
`file:line: message` problems, exactly those the loader reports in-process. The parent reads them with
an Unpickler that admits only the model classes (config/model.py's, and those in the package of each
installed driver plugin) and a few plain builtins: the bytes are our own child's, never the config's
text, but nothing else could be constructed from them anyway. A child that does not answer within
TIMEOUT is killed by its PID and the load fails with LoadFailed (an OSError, refused as an unreadable
directory is), which says so.
`edge-cfg lint` and tests keep loading in-process.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import gc
import importlib
import io
import logging
import pickle
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from edge_gateway.config.model import EtcdSourceCfg, Snapshot, is_store_url
from edge_gateway.config.problems import ConfigError

log = logging.getLogger(__name__)

TIMEOUT = 60.0  # s; 10 000 tags load in about 3 s on 2 shared cores, and a reload may take 120 s in all
_BUILTINS = frozenset({"frozenset", "set", "complex", "bytearray", "range", "slice"})


class LoadFailed(OSError):
    """The loader child crashed, or hung and was killed; the message says which, with its PID. An
    OSError: every caller already refuses a directory it cannot read with its message."""


class Load:
    """One load under way in its child; `result()` waits for the answer, so the caller can work
    meanwhile (the gateway imports its runtime while the child reads the files)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True
        )

    def result(self, timeout: float | None = None) -> Any:
        """The child's value; ConfigError with its problems, OSError when the directory cannot be read,
        LoadFailed when the child fails or is silent for `timeout` (default TIMEOUT) seconds."""
        proc, timeout = self.proc, TIMEOUT if timeout is None else timeout
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL to this child's PID only
            proc.communicate()
            raise LoadFailed(
                f"the configuration loader (pid {proc.pid}) did not answer within {timeout:g} s and was killed"
            ) from None
        if proc.returncode != 0 or not out:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise LoadFailed(f"the configuration loader (pid {proc.pid}) exited with {proc.returncode}: {last[0]}")
        for line in err.decode(errors="replace").splitlines():  # the loader's own log records (a plugin that fails)
            log.warning("configuration loader: %s", line)
        kind, value = _Unpickler(io.BytesIO(out)).load()
        if kind == "problems":
            raise ConfigError(value)
        if kind == "oserror":
            raise OSError(value)
        return value


def load_snapshot(directory: str | Path, base: str | Path | None = None, timeout: float | None = None) -> Snapshot:
    """loader.load_snapshot(directory, base), run in a child (Load.result says what it raises)."""
    result = Load("load", str(directory), *([str(base)] if base is not None else [])).result(timeout)
    assert isinstance(result, Snapshot)
    return result


def start(config: str) -> Callable[[], Snapshot | EtcdSourceCfg]:
    """What `edge-gateway run --config X` starts from, begun now: the returned call waits for it. The etcd
    source an etcd:// URL or DIR/gateway.yml names (bootstrap.resolve), else DIR's Snapshot."""
    if is_store_url(config):
        return partial(EtcdSourceCfg, url=config)
    return Load("start", config).result


# What a Snapshot, an EtcdSourceCfg or a problem list is made of, outside the plugins' packages.
_MODEL_MODULES = frozenset({"edge_gateway.config.model"})  # every class there is a model record
_MODEL_NAMES = frozenset(
    {
        ("edge_gateway.config.problems", "Problem"),
        ("edge_gateway.config.expr", "compile_scale"),  # a Scale pickles as its source text
        ("edge_gateway.core.driver", "EndpointItem"),
        ("edge_gateway.core.driver", "DeviceItem"),
        ("edge_gateway.core.driver", "TagItem"),
    }
)


class _Unpickler(pickle.Unpickler):
    """Only the model: the classes of config/model.py, the generic tables' items, a problem, a
    scale, and in an installed driver plugin's own package (edge_gateway/drivers/modbus/, say) its
    dataclasses and enums, which are its model records. Not any other class of edge_gateway (a
    worker, a plugin, the gateway itself), whose construction could do more than hold values."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _BUILTINS:
            return getattr(builtins, name)
        if (module, name) in _MODEL_NAMES:
            return getattr(importlib.import_module(module), name)
        if module in _MODEL_MODULES or _in_package(module, _plugin_packages()):
            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type) and (
                module in _MODEL_MODULES or dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)
            ):
                return obj
        raise pickle.UnpicklingError(f"the configuration loader sent {module}.{name}, which is not a model class")


def _in_package(module: str, packages: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _plugin_packages() -> set[str]:
    """The package of every installed driver plugin, where its model lives: edge_gateway.drivers.s7
    for the built-in S7 plugin (edge_gateway/drivers/s7/plugin.py), `acme` for `acme.plugin`."""
    from edge_gateway.core import registry

    modules = {type(p).__module__ for p in registry.drivers().values()}
    return {m.rpartition(".")[0] or m for m in modules}


def _child(argv: list[str]) -> tuple[str, Any]:
    from edge_gateway.config import bootstrap, loader

    mode, directory, *base = argv
    try:
        if mode == "start":
            store = bootstrap.resolve(directory)
            if store is not None:
                return "value", store
        return "value", loader.load_snapshot(directory, base[0] if base else None)
    except ConfigError as e:
        return "problems", e.problems
    except OSError as e:
        return "oserror", str(e)


if __name__ == "__main__":
    # A child that lives for one load: its garbage goes with it. The cyclic collector would walk the
    # growing heap (130 000 YAML nodes, then the model) again and again for nothing: ~10 % of a
    # 10 000-tag load. Nothing here makes cycles of any size (a recursive alias is refused small).
    gc.disable()
    sys.stdout.buffer.write(pickle.dumps(_child(sys.argv[1:]), protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.flush()
