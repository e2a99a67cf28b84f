#![no_main]
//! Fuzz target `resume`: see `blip2_fuzz::resume`.

#[global_allocator]
static ALLOC: blip2_fuzz::BoundedAlloc = blip2_fuzz::BoundedAlloc;

libfuzzer_sys::fuzz_target!(init: blip2_fuzz::init(), |data: &[u8]| blip2_fuzz::resume(data));
