package broker

import (
	"context"
	"log/slog"
)

// mochiLog adapts the broker's logger for mochi. mochi's Info messages (hook added,
// server started and stopped) become Debug: the broker logs its own. Attributes "pk" and
// "packet", with which mochi dumps whole packets (payloads included, up to the maximum
// packet size) into warnings, are left out.
type mochiLog struct{ h slog.Handler }

func (m mochiLog) Enabled(ctx context.Context, l slog.Level) bool {
	return m.h.Enabled(ctx, demote(l))
}

func (m mochiLog) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, demote(r.Level), r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "pk" && a.Key != "packet" {
			out.AddAttrs(a)
		}
		return true
	})
	return m.h.Handle(ctx, out)
}

func (m mochiLog) WithAttrs(as []slog.Attr) slog.Handler { return mochiLog{m.h.WithAttrs(as)} }
func (m mochiLog) WithGroup(name string) slog.Handler    { return mochiLog{m.h.WithGroup(name)} }

func demote(l slog.Level) slog.Level {
	if l == slog.LevelInfo {
		return slog.LevelDebug
	}
	return l
}
