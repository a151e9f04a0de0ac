#![no_main]
// See atelier_fuzzing::stylize_form.
libfuzzer_sys::fuzz_target!(|data: &[u8]| atelier_fuzzing::stylize_form(data));
