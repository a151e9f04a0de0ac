#![no_main]
// See atelier_fuzzing::stylize_request.
libfuzzer_sys::fuzz_target!(
    init: atelier_fuzzing::init_stylize_request(),
    |data: &[u8]| atelier_fuzzing::stylize_request(data)
);
