#![no_main]
// See atelier_fuzzing::pth_import.
libfuzzer_sys::fuzz_target!(|data: &[u8]| atelier_fuzzing::pth_import(data));
