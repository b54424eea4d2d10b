//! What the page says: outcome messages, durations, dates. Pure, so it is
//! tested on the host.

use signalling::contacts::PresenceState;
use signalling::{EndReason, ErrorCode, HistoryKind, Outcome};

/// The sentence shown when a call ends, or `None` when nothing needs saying
/// (this side ended it).
pub fn ended(reason: EndReason, peer: &str) -> String {
    match reason {
        EndReason::AnsweredElsewhere => "Answered on another of your devices.".into(),
        EndReason::Declined => format!("{peer} declined the call."),
        EndReason::NoAnswer => format!("No answer from {peer}."),
        EndReason::Cancelled => format!("{peer} hung up before you answered."),
        EndReason::Busy => format!("{peer} is busy in another call."),
        EndReason::Offline => format!("{peer} is offline. They will see that you called."),
        EndReason::UnknownUser => format!("There is no user {peer}."),
        EndReason::UnknownZone => {
            let zone = peer.rsplit_once('@').map_or(peer, |(_, z)| z);
            format!("No zone called “{zone}” can be found in the mesh.")
        }
        EndReason::UnreachableZone => format!("The zone of {peer} cannot be reached right now. Try again later."),
        EndReason::HungUp => format!("{peer} hung up."),
        EndReason::ConnectionLost => format!("The connection to {peer} was lost."),
        _ => "The call ended.".into(),
    }
}

/// The sentence for a request the node refused.
pub fn error(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::InvalidAddress => format!("That is not a valid address: {message}"),
        ErrorCode::AlreadyInCall => "You are already in a call on this device.".into(),
        ErrorCode::CannotCallSelf => "You cannot call yourself.".into(),
        ErrorCode::AlreadyAnswered => "The call was answered on another device.".into(),
        ErrorCode::RateLimited => "Slow down a little and try again.".into(),
        ErrorCode::TooManyDevices => "You have too many devices connected. Close one and reload.".into(),
        ErrorCode::InvalidToken => "Your session has ended. Please log in again.".into(),
        ErrorCode::ShuttingDown => "Your node is restarting. Try again in a minute.".into(),
        _ => format!("Something went wrong: {message}"),
    }
}

/// What to say when the node announces it is shutting down.
pub fn going_away(within_ms: u64) -> String {
    let s = within_ms.div_ceil(1000);
    format!("Your node is restarting: a call now ends within {s} s. You will be reconnected when it is back.")
}

/// `mm:ss`, or `h:mm:ss` past an hour.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    }
}

/// A history entry's label.
pub fn history_kind(kind: HistoryKind) -> &'static str {
    match kind {
        HistoryKind::Sent => "sent",
        HistoryKind::Received => "received",
        HistoryKind::Missed => "missed",
    }
}

/// A history entry's outcome, in words.
pub fn outcome(o: Outcome, duration_ms: u64) -> String {
    match o {
        Outcome::HungUpByCaller | Outcome::HungUpByCallee | Outcome::ConnectionLost => duration(duration_ms),
        Outcome::Declined => "declined".into(),
        Outcome::NoAnswer => "no answer".into(),
        Outcome::Cancelled => "cancelled".into(),
        Outcome::Busy => "busy".into(),
        Outcome::Offline => "offline".into(),
        Outcome::UnknownUser => "unknown user".into(),
        Outcome::UnknownZone => "unknown zone".into(),
        Outcome::UnreachableZone => "zone unreachable".into(),
        _ => String::new(),
    }
}

/// Reconnect delay after `attempt` failures: 0.5 s doubling to 15 s.
pub fn backoff_ms(attempt: u32) -> u32 {
    500u32.saturating_mul(1 << attempt.min(5)).min(15_000)
}

/// How a contact's presence is shown.
pub fn presence(state: PresenceState) -> &'static str {
    match state {
        PresenceState::Online => "online",
        PresenceState::Away => "away",
        PresenceState::Busy => "busy",
        PresenceState::InCall => "in a call",
        _ => "offline",
    }
}

/// The sentence for a contact request the node refused, by its error code.
pub fn contact_error(code: &str, message: &str) -> String {
    match code {
        "unknown_user" => "There is no such user.".into(),
        "unknown_zone" => "No zone of that name can be found in the mesh.".into(),
        "own_address" => "That is your own address.".into(),
        "already_contact" => "You are already contacts.".into(),
        "already_requested" => "You have already asked; they have not answered yet.".into(),
        "unreachable" => "Their zone cannot be reached right now. Try again later.".into(),
        "rate_limited" => "You have sent many requests lately. Try again later.".into(),
        "invalid_address" => format!("That is not a valid address: {message}"),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences() {
        assert_eq!(ended(EndReason::Busy, "bob@sants"), "bob@sants is busy in another call.");
        assert!(ended(EndReason::UnknownZone, "bob@nowhere").contains("“nowhere”"));
        assert_eq!(duration(61_000), "01:01");
        assert_eq!(duration(3_725_000), "1:02:05");
        assert_eq!(outcome(Outcome::HungUpByCallee, 5_000), "00:05");
        assert_eq!(backoff_ms(0), 500);
        assert_eq!(backoff_ms(10), 15_000);
    }
}
