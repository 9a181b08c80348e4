//! Stand-ins for the push providers the gateway sends notifications to, each on its own port
//! (the real providers are separate hosts): they verify what the real ones verify (signatures,
//! tokens, headers, payload shape), record what they accepted, and answer scripted errors.
//! For tests only: their keys are generated at run time and never leave the process.

pub mod apns;
pub mod expo;
pub mod fcm;
pub mod webpush;
