//! Image references (packager/src/image/reference.rs), as given to `--base`
//! and `--push`: never a panic, and an accepted reference prints in a form
//! that parses back to the same reference.
#![no_main]
#![allow(dead_code, unused_imports)]

/// The packager's image model (see build.rs).
mod image {
    include!(concat!(env!("OUT_DIR"), "/image.rs"));
}

use image::reference::ImageRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(image) = ImageRef::parse(input) else {
        return;
    };
    let printed = image.to_string();
    let again = ImageRef::parse(&printed)
        .unwrap_or_else(|e| panic!("{input:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again.to_string(), printed);
    assert!(!image.reference().is_empty());
});
