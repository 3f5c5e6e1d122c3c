//! When a client spends its bandwidth credential, decided from what its gateway says; the
//! wallet itself (files, the spend's crypto) stays with the driver.
//!
//! A metered gateway reports `Bandwidth{remaining}` after its welcome and as it charges. The
//! client spends a credential when that balance is below [`LOW_WATER_BYTES`] or when a forward
//! is refused with `NO_BANDWIDTH`; one spend at a time, until the gateway answers it
//! (credited: a `Bandwidth`; refused: `BAD_CREDENTIAL`; not now: `OVERLOADED`, kept for the
//! next request). A gateway with open admission never reports a balance, so nothing is spent
//! there. A low balance alone is no problem (receiving costs nothing): only a refused forward
//! with nothing to spend is worth telling the user, once per session.

use crate::client_session::ClientEvent;
use crate::wire::messages::error_code;

/// A reported balance below this makes the client spend its credential.
pub const LOW_WATER_BYTES: u64 = 64 * 1024;

/// What the driver does after a gateway event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// Spend a credential now (then [`Payer::spending`] or [`Payer::unavailable`]).
    /// `refused`: packets are being refused for lack of bandwidth meanwhile.
    Spend {
        refused: bool,
    },
    /// The spend was credited: mark the credential spent.
    Credited {
        remaining_bytes: u64,
    },
    /// The spend was refused (invalid, expired, spent): set the credential aside.
    CredentialRefused {
        text: String,
    },
    /// The gateway could not check it now: keep it for the next request.
    Deferred,
}

/// What to tell the user when no credential could be spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// Nothing worth saying (a low balance, or said already this session).
    Quiet,
    /// Forwards are refused and there is nothing to spend: say so (once per session).
    Warn,
}

#[derive(Debug, Default, Clone)]
pub struct Payer {
    /// A spend was sent; the gateway has not answered yet.
    pending: bool,
    /// The user was told about a shortfall in this session.
    warned: bool,
    /// Forwards refused for lack of bandwidth with nothing to spend.
    refused_without_credential: u64,
}

impl Payer {
    /// A new session: nothing pending, nothing said.
    pub fn new() -> Payer {
        Payer::default()
    }

    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// Forwards refused for lack of bandwidth while nothing could be spent.
    pub fn refused_without_credential(&self) -> u64 {
        self.refused_without_credential
    }

    pub fn on_event(&mut self, event: &ClientEvent) -> Decision {
        match event {
            ClientEvent::Bandwidth { remaining_bytes } if self.pending => {
                self.pending = false;
                Decision::Credited {
                    remaining_bytes: *remaining_bytes,
                }
            }
            ClientEvent::Bandwidth { remaining_bytes } if *remaining_bytes < LOW_WATER_BYTES => {
                Decision::Spend { refused: false }
            }
            ClientEvent::Error {
                code: error_code::NO_BANDWIDTH,
                ..
            } if !self.pending => Decision::Spend { refused: true },
            ClientEvent::Error {
                code: error_code::BAD_CREDENTIAL,
                text,
            } if self.pending => {
                self.pending = false;
                Decision::CredentialRefused { text: text.clone() }
            }
            ClientEvent::Error {
                code: error_code::OVERLOADED,
                ..
            } if self.pending => {
                self.pending = false;
                Decision::Deferred
            }
            // A new session forgets an unanswered spend: it is sent again when asked (a
            // gateway that had credited it refuses the repeat, and the balance is there).
            ClientEvent::Welcome { .. } | ClientEvent::Closed { .. } => {
                *self = Payer {
                    refused_without_credential: self.refused_without_credential,
                    ..Payer::default()
                };
                Decision::Nothing
            }
            _ => Decision::Nothing,
        }
    }

    /// The driver sent a `Credential` for a [`Decision::Spend`].
    pub fn spending(&mut self) {
        self.pending = true;
    }

    /// The driver had nothing to spend (or the credential was unusable) for a
    /// [`Decision::Spend`]; says whether to tell the user.
    pub fn unavailable(&mut self, refused: bool) -> Shortfall {
        if !refused {
            return Shortfall::Quiet;
        }
        self.refused_without_credential += 1;
        if std::mem::replace(&mut self.warned, true) {
            Shortfall::Quiet
        } else {
            Shortfall::Warn
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: u8) -> ClientEvent {
        ClientEvent::Error {
            code,
            text: "why".into(),
        }
    }

    fn balance(remaining_bytes: u64) -> ClientEvent {
        ClientEvent::Bandwidth { remaining_bytes }
    }

    #[test]
    fn a_low_balance_or_a_refusal_spends_once_until_answered() {
        let mut payer = Payer::new();
        assert_eq!(payer.on_event(&balance(LOW_WATER_BYTES)), Decision::Nothing);
        assert_eq!(
            payer.on_event(&balance(LOW_WATER_BYTES - 1)),
            Decision::Spend { refused: false }
        );
        payer.spending();
        // While it is pending: refusals do not spend a second credential.
        let no_bandwidth = error(error_code::NO_BANDWIDTH);
        assert_eq!(payer.on_event(&no_bandwidth), Decision::Nothing);
        // The answer: the next balance is the credit.
        assert_eq!(
            payer.on_event(&balance(1 << 30)),
            Decision::Credited {
                remaining_bytes: 1 << 30
            }
        );
        assert!(!payer.is_pending());
        assert_eq!(
            payer.on_event(&no_bandwidth),
            Decision::Spend { refused: true }
        );
    }

    #[test]
    fn refused_and_deferred_spends() {
        let mut payer = Payer::new();
        let _ = payer.on_event(&error(error_code::NO_BANDWIDTH));
        payer.spending();
        assert_eq!(
            payer.on_event(&error(error_code::BAD_CREDENTIAL)),
            Decision::CredentialRefused { text: "why".into() }
        );
        let _ = payer.on_event(&error(error_code::NO_BANDWIDTH));
        payer.spending();
        assert_eq!(
            payer.on_event(&error(error_code::OVERLOADED)),
            Decision::Deferred
        );
        // Errors about something else while nothing is pending change nothing.
        assert_eq!(
            payer.on_event(&error(error_code::BAD_CREDENTIAL)),
            Decision::Nothing
        );
        assert_eq!(
            payer.on_event(&error(error_code::NOT_LAYER1)),
            Decision::Nothing
        );
    }

    #[test]
    fn a_shortfall_is_told_once_per_session_and_only_when_packets_are_refused() {
        let mut payer = Payer::new();
        assert_eq!(payer.unavailable(false), Shortfall::Quiet);
        assert_eq!(payer.unavailable(true), Shortfall::Warn);
        assert_eq!(payer.unavailable(true), Shortfall::Quiet);
        assert_eq!(payer.refused_without_credential(), 2);
        let _ = payer.on_event(&ClientEvent::Welcome { stored: 0 });
        assert_eq!(payer.unavailable(true), Shortfall::Warn);
        assert_eq!(payer.refused_without_credential(), 3);
    }

    #[test]
    fn a_new_session_forgets_an_unanswered_spend() {
        let mut payer = Payer::new();
        let _ = payer.on_event(&balance(0));
        payer.spending();
        let _ = payer.on_event(&ClientEvent::Welcome { stored: 0 });
        assert!(!payer.is_pending());
        assert_eq!(
            payer.on_event(&balance(0)),
            Decision::Spend { refused: false }
        );
    }
}
