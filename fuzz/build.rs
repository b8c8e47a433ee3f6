//! Writes `$OUT_DIR/image.rs`: the packager's image model
//! (packager/src/image/mod.rs) without its network half (`mod remote`,
//! which needs the registry client and so tokio and the HTTP stack), with
//! its other submodules pointed at their files. The targets include it, so
//! they fuzz the packager's own parsing code without building, instrumented,
//! everything the packager links.

use std::path::Path;

fn main() {
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packager/src/image");
    let image = image.canonicalize().expect("packager/src/image exists");
    let source = std::fs::read_to_string(image.join("mod.rs")).expect("read image/mod.rs");
    let mut out = String::new();
    for line in source.lines() {
        // Inner doc comments cannot be `include!`d into a module.
        if line.trim_start().starts_with("//!") {
            continue;
        }
        match line
            .trim()
            .strip_prefix("pub mod ")
            .and_then(|l| l.strip_suffix(';'))
        {
            Some("remote") => continue,
            Some(name) => out.push_str(&format!(
                "#[path = {:?}]\npub mod {name};\n",
                image.join(format!("{name}.rs"))
            )),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("image.rs");
    std::fs::write(dest, out).expect("write image.rs");
    println!("cargo::rerun-if-changed=../packager/src/image");
}
