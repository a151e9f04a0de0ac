#![no_main]
// See atelier_fuzzing::dataset_zip.
libfuzzer_sys::fuzz_target!(|data: &[u8]| atelier_fuzzing::dataset_zip(data));
