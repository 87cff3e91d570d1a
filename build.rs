// Give the `axbench` binary an rpath to the libtorch it was linked against, so it runs without
// LD_LIBRARY_PATH. torch-sys exports the directory as DEP_TCH_LIBTORCH_LIB to direct dependents.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
