//! `stats --watch` on a terminal: a table refreshed in place, per rule, pass kind and drop
//! reason, with packets, bytes and their rates, for all interfaces or one (Tab and
//! Shift-Tab switch). It fits 80 columns, and q, Esc or Ctrl-C quit and give the terminal back
//! as it was (ratatui restores it, also on a panic).

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
    // 0: all interfaces; n: the n-th interface with counters.
    let mut view = 0usize;
    loop {
        let now = super::stats::fetch(instance)?;
        let at = Instant::now();
        let secs = before
            .as_ref()
            .map_or(0.0, |(_, t)| (at - *t).as_secs_f64());
        let rows = rates::rows(before.as_ref().map(|(s, _)| s), &now, secs);
        let views = now.by_interface.len() + 1;
        loop {
            view %= views;
            let shown = view.checked_sub(1).map(|i| &now.by_interface[i].interface);
            terminal.draw(|frame| draw(frame, instance, &now, &rows, shown, interval))?;
            match key_until(at + interval)? {
                Key::Quit => return Ok(()),
                Key::Next => view += 1,
                Key::Previous => view += views - 1,
                Key::None => break,
            }
        }
        before = Some((now, at));
    }
}

enum Key {
    Quit,
    Next,
    Previous,
    /// The deadline came first.
    None,
}

/// The first key that means something, or none by `deadline`.
fn key_until(deadline: Instant) -> Result<Key> {
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if !event::poll(left)? {
            break;
        }
        let Event::Key(key) = event::read()? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Ok(Key::Quit),
            _ if ctrl_c => return Ok(Key::Quit),
            KeyCode::Tab | KeyCode::Right => return Ok(Key::Next),
            KeyCode::BackTab | KeyCode::Left => return Ok(Key::Previous),
            _ => {}
        }
    }
    Ok(Key::None)
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
    interface: Option<&String>,
    interval: Duration,
) {
    let header = Row::new(["", "PACKETS", "PKT/S", "BYTES", "RATE"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let mut sections: Vec<(String, Vec<rates::Row>)> = [
        ("rule", "RULES"),
        ("pass", "PASSED WITHOUT A RULE"),
        ("drop", "DROPPED"),
    ]
    .into_iter()
    .filter(|(section, _)| interface.is_none() || *section != "rule")
    .map(|(section, title)| {
        let title = match (interface, section) {
            (Some(_), "pass") => "PASSED (\"rule\": by any rule)",
            _ => title,
        };
        let counters = rows
            .iter()
            .filter(|r| r.section == section && r.interface.as_ref() == interface)
            .cloned()
            .collect();
        (title.to_string(), counters)
    })
    .collect();
    if interface.is_none() && !stats.by_interface.is_empty() {
        sections.push((
            "INTERFACES (Tab: one alone)".into(),
            per_interface(stats, rows),
        ));
    }
    // Titles, the header and the borders take some lines: when every counter does not fit,
    // the idle ones (never counted) give way, and the title says how many.
    let room = usize::from(frame.area().height).saturating_sub(3 + sections.len());
    let all: usize = sections.iter().map(|(_, c)| c.len()).sum();
    let hide_idle = all > room;
    let mut hidden = 0;
    let mut lines = Vec::new();
    for (title, counters) in &sections {
        lines
            .push(Row::new([title.clone()]).style(Style::new().add_modifier(Modifier::UNDERLINED)));
        for r in counters {
            if hide_idle && r.packets == 0 {
                hidden += 1;
                continue;
            }
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
    let on = match interface {
        Some(interface) => interface.clone(),
        None => stats.interfaces.join(", "),
    };
    let title = format!(
        " director-fw {} on {on} - every {:.1} s{idle} - q quits ",
        instance.name,
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

/// Each interface's passes and drops (audit drops passed, so they count as passes here).
fn per_interface(stats: &Stats, rows: &[rates::Row]) -> Vec<rates::Row> {
    let mut out = Vec::new();
    for i in &stats.by_interface {
        for (verdict, dropped) in [("passed", false), ("dropped", true)] {
            let of_it = rows.iter().filter(|r| {
                r.interface.as_ref() == Some(&i.interface)
                    && (r.section == "drop" && !r.audit) == dropped
            });
            let mut sum = rates::Row {
                interface: Some(i.interface.clone()),
                section: "interface",
                name: format!("{} {verdict}", i.interface),
                audit: false,
                packets: 0,
                bytes: 0,
                packets_per_sec: 0.0,
                bytes_per_sec: 0.0,
            };
            for r in of_it {
                sum.packets += r.packets;
                sum.bytes += r.bytes;
                sum.packets_per_sec += r.packets_per_sec;
                sum.bytes_per_sec += r.bytes_per_sec;
            }
            out.push(sum);
        }
    }
    out
}
