// The build script of the `axbench` binary and of every crate whose tests link libtorch (their
// Cargo.toml names this file): an rpath to the libtorch it was linked against, so binaries and
// test executables run without LD_LIBRARY_PATH. torch-sys exports the directory as
// DEP_TCH_LIBTORCH_LIB to its direct dependents.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
