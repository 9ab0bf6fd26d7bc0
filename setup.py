import os

from setuptools import find_packages, setup

# The CPU wheel by default. A GPU user installs paddlepaddle-gpu first (see README)
# and names it here, so pip does not add the CPU wheel beside it.
PADDLE = os.environ.get("PADDLENLP_EXT_PADDLE_PACKAGE", "paddlepaddle")

setup(
    name="paddlenlp-ext",
    version="0.1.0",
    description="Remove redundant loop copies from static-graph LLM decoding in PaddlePaddle 3.x",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["paddlenlp_ext", "paddlenlp_ext.*"]),
    # the embedded models' tokenizer, and our kernels' sources (built on first use)
    package_data={"paddlenlp_ext": ["data/*.txt", "data/*.model", "native/*.cc", "native/*.h"]},
    python_requires=">=3.9",
    install_requires=[
        f"{PADDLE}>=3.0,<4",
        "paddlenlp==2.8.1",
        # paddlenlp 2.8.1 imports only with these older versions of its dependencies:
        "numpy==1.26.4",  # pyarrow 17+ needs numpy 2, which paddlenlp 2.8.1 does not support
        "huggingface-hub==0.25.2",  # newer ones lack repo_type_and_id_from_hf_id
        "aistudio-sdk==0.2.6",  # 0.3 lacks hub.download
        "datasets==2.21.0",
        "pyarrow==16.1.0",
    ],
    extras_require={
        # scripts/benchmark.py's plot (and its test). paddlenlp already pulls matplotlib in
        # through visualdl; 3.7 to 3.11 ask for numpy >= 1.25 at most, so numpy 1.26.4 stays
        # (3.11.2, the one visualdl brought in, is what the benchmark was run with).
        "bench": ["matplotlib>=3.7,<3.12"],
        # pytest-xdist: the README's test command runs the suite in two workers; pytest-timeout:
        # a hung test fails with its stacks (pytest.ini).
        "test": ["pytest>=7", "pytest-xdist>=3", "pytest-timeout>=2", "matplotlib>=3.7,<3.12"],
        # scripts/benchmark.py --peers (scripts/bench/peers.py): never in the default install.
        # torch 2.13.0: the CPU wheel (a version pip must download is a CUDA build of
        # several GB); transformers 4.48.3: the last that keeps the huggingface-hub 0.25.2
        # paddlenlp 2.8.1 imports with (4.49 upgrades it); llama-cpp-python builds from
        # source (5-20 minutes on 2 cores; CMAKE_ARGS=-DGGML_NATIVE=ON builds for this CPU, except
        # on a CPU with AMX, where llama.cpp's AMX kernels then segfault on Q8_0 (seen with
        # 0.3.36 on a Xeon with AMX; llama.cpp issue #20824): docs/benchmark-method.md gives
        # the flags without AMX).
        "peers": ["torch==2.13.0", "transformers==4.48.3", "gguf==0.19.0", "llama-cpp-python==0.3.36"],
    },
)
