#![no_main]
// See atelier_fuzzing::model_file.
libfuzzer_sys::fuzz_target!(|data: &[u8]| atelier_fuzzing::model_file(data));
