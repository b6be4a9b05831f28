"""Repository rule @libtorch: LibTorch found through the LIBTORCH_HOME environment variable.

LIBTORCH_HOME is a directory with include/ and lib/ (the `torch` package directory of a PyPI wheel, or an
unpacked LibTorch zip, CPU or CUDA). tools/setup.sh writes `--repo_env=LIBTORCH_HOME=...` into
.bazelrc.local, so plain `bazel build` sees the venv's wheel; exporting LIBTORCH_HOME overrides it.
Binaries get an rpath to lib/, so they run without LD_LIBRARY_PATH.
"""

_BUILD = """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "headers",
    hdrs = glob(["include/**/*.h", "include/**/*.hpp", "include/**/*.cuh"]),
    textual_hdrs = glob(["include/**/*.inc", "include/**/*.def"]),
    includes = ["include", "include/torch/csrc/api/include"],
    defines = ["_GLIBCXX_USE_CXX11_ABI=1"],
)

# CPU LibTorch: operators register from static initialisers, so never let the linker drop the libs.
cc_library(
    name = "torch_cpu",
    deps = [":headers"],
    linkopts = [
        "-L{home}/lib",
        "-Wl,-rpath,{home}/lib",
        "-Wl,--push-state,--no-as-needed",
        "-ltorch_cpu",
        "-lc10",
        "-Wl,--pop-state",
        "-lpthread",
    ],
)

# CUDA LibTorch (--config=cuda): also torch_cuda/c10_cuda. The wheel's CUDA libraries come from the
# nvidia-* wheels beside it; -rpath-link lets the linker resolve libtorch_cuda's own dependencies.
cc_library(
    name = "torch_cuda",
    deps = [":torch_cpu"],
    linkopts = [
        "-Wl,--push-state,--no-as-needed",
        "-ltorch_cuda",
        "-lc10_cuda",
        "-Wl,--pop-state",
    ] + {nvidia_linkopts},
)
"""

def _libtorch_impl(ctx):
    home = ctx.os.environ.get("LIBTORCH_HOME", "")
    if not home:
        fail("LIBTORCH_HOME is not set: run tools/setup.sh (it records the venv's LibTorch in " +
             ".bazelrc.local) or export LIBTORCH_HOME=/path/to/libtorch (a directory with include/ and lib/)")
    if not ctx.path(home + "/lib/libtorch_cpu.so").exists:
        fail("LIBTORCH_HOME=%s has no lib/libtorch_cpu.so; expected a LibTorch directory with include/ and lib/" % home)
    # Mirror include/ entry by entry, leaving out the wheel's bundled protobuf headers (an older
    # protobuf than Debian's libprotobuf, which our generated code needs).
    for entry in ctx.path(home + "/include").readdir():
        if entry.basename not in ["google", "pybind11"]:
            ctx.symlink(entry, "include/" + entry.basename)
    ctx.symlink(home + "/lib", "lib")
    nvidia = ctx.path(home + "/../nvidia")
    nvidia_linkopts = []
    if nvidia.exists:
        for d in nvidia.readdir():
            if d.get_child("lib").exists:
                nvidia_linkopts.append("-Wl,-rpath-link,%s/lib" % d)
                nvidia_linkopts.append("-Wl,-rpath,%s/lib" % d)
    ctx.file("BUILD.bazel", _BUILD.replace("{home}", home).replace("{nvidia_linkopts}", repr(nvidia_linkopts)))

libtorch_repository = repository_rule(
    implementation = _libtorch_impl,
    environ = ["LIBTORCH_HOME"],
    local = True,
)
