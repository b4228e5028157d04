"""One stack with a secret in every place a stack file can hold one, through the whole cycle:
validate, plan, render, doctor, up, status, check, logs, the gateway, down. No planted value may
appear in any output, in any file under the state dir (plan, pidfiles, log files), or in the
argv of anything started; each must still reach its server (proved by servers that refuse a
request without it)."""

from __future__ import annotations

from pathlib import Path

import openai
import psutil
import pytest

from tests.conftest import H2O, ROOT, free_port, marked_processes

pytestmark = pytest.mark.integration

PLANTED = {
    "PLANT_HF": "hf_plantedToken0aa11",  # HF_TOKEN of a TGI server and of transformers serve
    "PLANT_TGI": "sk-planted-tgi-bb22",  # a TGI server's api_key (the server refuses requests without it)
    "PLANT_OAI": "sk-planted-openai-cc33",  # an external OpenAI-compatible endpoint's api_key
    "PLANT_ADMIN": "planted-admin-dd44",  # the front's admin password
    "PLANT_GW": "sk-planted-gateway-ee55",  # the gateway's bearer key
    "PLANT_PW": "planted-ui-password-ff66",  # the front's login password
}


def test_planted_secrets_never_leak(h2o: H2O, write_stack, stack_name: str, tiny_model: Path) -> None:
    ports = {k: free_port() for k in ("tgi", "tiny", "chat")}
    path = write_stack(f"""\
version: 1
name: {stack_name}
services:
  tgi:
    kind: tgi
    launcher: {ROOT / 'tests' / 'tgi-launcher'}
    model: h2oai/h2ogpt-oasst1-512-12b
    port: {ports['tgi']}
    api_key: ${{PLANT_TGI}}
    env: {{HF_TOKEN: "${{PLANT_HF}}"}}
  tiny:
    kind: transformers
    model: {tiny_model}
    port: {ports['tiny']}
    env: {{HF_TOKEN: "${{PLANT_HF}}"}}
  ext:
    kind: openai
    url: http://127.0.0.1:{ports['tiny']}/v1
    model: {tiny_model}
    api_key: ${{PLANT_OAI}}
    depends_on: [tiny]
fronts:
  chat:
    port: {ports['chat']}
    models: [tgi, tiny, ext]
    admin_pass: ${{PLANT_ADMIN}}
    api_keys: ["${{PLANT_GW}}"]
    auth: {{user: me, password: "${{PLANT_PW}}"}}
""")
    h2o.env.update(PLANTED)
    seen: list[str] = []

    def run(*args: str, ok: bool = True) -> str:
        out = h2o(*args, timeout=600)
        if ok:
            assert out.returncode == 0, (args, out.stdout[-3000:], out.stderr[-3000:])
        seen.append(out.stdout + out.stderr)
        return out.stdout + out.stderr

    run("validate", str(path))
    run("plan", str(path))
    assert '"API_KEY": "***"' in run("plan", str(path), "--json")
    run("render", str(path))
    run("doctor", str(path), ok=False)  # (no GPUs here: doctor may say so)
    run("up", str(path))
    argv = [cmd for _, cmd in marked_processes(h2o.state_dir, stack_name)]
    argv += [" ".join(p.cmdline()) for p in psutil.process_iter() if p.pid in
             {pid for pid, _ in marked_processes(h2o.state_dir, stack_name)}]
    assert argv, "nothing was started"
    run("status", str(path))
    run("status", str(path), "--json")
    run("check", str(path))
    for service in ("tgi", "tiny", "chat", None):
        run("logs", str(path), *([service] if service else []), "--tail", "200")

    # each secret reached its server: the TGI key (the stand-in refuses requests without it), the
    # gateway key, and the whole chain through the gateway to every model
    base = f"http://127.0.0.1:{ports['chat']}/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=base, api_key=PLANTED["PLANT_GW"], max_retries=0)
    for model in ("tgi", "tiny", "ext"):
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3)
        assert reply.choices[0].message.content is not None, model
    run("logs", str(path), "--tail", "500")  # after the requests, too
    run("down", str(path))

    files = [f for f in h2o.state_dir.rglob("*") if f.is_file()]
    assert any(f.suffix == ".log" or "log" in f.name for f in files), [str(f) for f in files]
    texts = {str(f): f.read_bytes().decode(errors="replace") for f in files}
    for env, value in PLANTED.items():
        for i, text in enumerate(seen):
            assert value not in text, f"{env} in the output of command #{i}"
        for where, text in texts.items():
            assert value not in text, f"{env} in {where}"
        for cmd in argv:
            assert value not in cmd, f"{env} in the argv {cmd[:100]}"
