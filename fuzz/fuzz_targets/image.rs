#![no_main]
// See atelier_fuzzing::image.
libfuzzer_sys::fuzz_target!(|data: &[u8]| atelier_fuzzing::image(data));
