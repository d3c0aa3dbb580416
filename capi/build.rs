//! Generates `mkwrite.h` from `src/lib.rs` with cbindgen, into `OUT_DIR`;
//! `include/mkwrite.h` is the checked-in copy (a test keeps them equal).

fn main() {
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).expect("cbindgen.toml");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("generate the C header")
        .write_to_file(out.join("mkwrite.h"));
}
