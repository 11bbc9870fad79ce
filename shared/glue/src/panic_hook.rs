//! A panic hook that logs at critical level before the VM traps, so an operator sees why.
//! (Panics are denied by lint in our code; this covers dependencies and the unforeseen.)

use std::sync::Once;

use crate::host;

static INSTALL: Once = Once::new();

/// Installs the hook once per VM.
pub fn install(filter: &'static str) {
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(move |info| {
            host::log(host::Level::Critical, format_args!("gatewarden {filter}: panic: {info}"));
        }));
    });
}
