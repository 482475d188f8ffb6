//! Ring buffer records -> events -> messages: any bytes, no panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pd_agent::snoop::{decode, Assembler};

fuzz_target!(|data: &[u8]| {
    let mut asm = Assembler::default();
    let size = std::mem::size_of::<pd_common::PdEvent>();
    for chunk in data.chunks(size.max(1)) {
        if let Ok(ev) = decode(chunk) {
            let _ = asm.push(&ev);
        }
    }
});
