#![no_main]
//! Fuzz target `config_vision`: see `blip2_fuzz::config_vision`.

#[global_allocator]
static ALLOC: blip2_fuzz::BoundedAlloc = blip2_fuzz::BoundedAlloc;

libfuzzer_sys::fuzz_target!(init: blip2_fuzz::init(), |data: &[u8]| blip2_fuzz::config_vision(data));
