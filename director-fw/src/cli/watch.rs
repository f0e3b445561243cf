//! `stats --watch` on a terminal: a table refreshed in place, per rule, pass kind and drop
//! reason, with packets, bytes and their rates. It fits 80 columns, and q, Esc or Ctrl-C
//! quit and give the terminal back as it was (ratatui restores it, also on a panic).

use std::time::{Duration, Instant};

use anyhow::Result;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use director_fw::{
    instance::Instance,
    telemetry::{rates, stats::Stats},
};
use ratatui::{
    layout::Constraint,
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Row, Table},
    Frame,
};

pub fn run(instance: &Instance, interval: Duration) -> Result<()> {
    let mut terminal = ratatui::init();
    let result = watch(&mut terminal, instance, interval);
    ratatui::restore();
    result
}

fn watch(
    terminal: &mut ratatui::DefaultTerminal,
    instance: &Instance,
    interval: Duration,
) -> Result<()> {
    let mut before: Option<(Stats, Instant)> = None;
    loop {
        let now = super::stats::fetch(instance)?;
        let at = Instant::now();
        let secs = before
            .as_ref()
            .map_or(0.0, |(_, t)| (at - *t).as_secs_f64());
        let rows = rates::rows(before.as_ref().map(|(s, _)| s), &now, secs);
        terminal.draw(|frame| draw(frame, instance, &now, &rows, interval))?;
        before = Some((now, at));
        let deadline = at + interval;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !event::poll(left)? {
                break;
            }
            if let Event::Key(key) = event::read()? {
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                let quit = matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c;
                if key.kind == KeyEventKind::Press && quit {
                    return Ok(());
                }
            }
        }
    }
}

/// Bits per second, in the unit that keeps it short.
fn bits(bytes_per_sec: f64) -> String {
    let bits = bytes_per_sec * 8.0;
    match bits {
        b if b >= 1e9 => format!("{:.1} Gb/s", b / 1e9),
        b if b >= 1e6 => format!("{:.1} Mb/s", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kb/s", b / 1e3),
        b => format!("{b:.0} b/s"),
    }
}

fn draw(
    frame: &mut Frame,
    instance: &Instance,
    stats: &Stats,
    rows: &[rates::Row],
    interval: Duration,
) {
    let header = Row::new(["", "PACKETS", "PKT/S", "BYTES", "RATE"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    // Three titles, the header and the borders take 6 lines: when every counter does not fit,
    // the idle ones (never counted) give way, and the title says how many.
    let room = usize::from(frame.area().height).saturating_sub(6);
    let hide_idle = rows.len() > room;
    let shown: Vec<&rates::Row> = rows
        .iter()
        .filter(|r| !hide_idle || r.packets != 0)
        .collect();
    let hidden = rows.len() - shown.len();
    let mut lines = Vec::new();
    for (section, title) in [
        ("rule", "RULES"),
        ("pass", "PASSED WITHOUT A RULE"),
        ("drop", "DROPPED"),
    ] {
        lines.push(Row::new([title]).style(Style::new().add_modifier(Modifier::UNDERLINED)));
        for r in shown.iter().filter(|r| r.section == section) {
            let name = if r.audit {
                format!("  {} (audit)", r.name)
            } else {
                format!("  {}", r.name)
            };
            lines.push(Row::new([
                name,
                r.packets.to_string(),
                format!("{:.1}", r.packets_per_sec),
                r.bytes.to_string(),
                bits(r.bytes_per_sec),
            ]));
        }
    }
    let idle = if hidden > 0 {
        format!(" - {hidden} idle hidden")
    } else {
        String::new()
    };
    let title = format!(
        " director-fw {} on {} - every {:.1} s{idle} - q quits ",
        instance.name,
        stats.interfaces.join(", "),
        interval.as_secs_f64()
    );
    let table = Table::new(
        lines,
        // 28 + 11 + 9 + 12 + 10 and 4 spaces between them: 74, inside the borders of 80.
        [
            Constraint::Length(28),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(12),
            Constraint::Length(10),
        ],
    )
    .header(header)
    .block(Block::bordered().title(Line::from(title)));
    frame.render_widget(table, frame.area());
}
