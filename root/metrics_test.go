package root

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/event"
)

// TestStoreCommandLabels: a command is counted under the collection it named when it
// started (getMore names it in a field of its own), and a failure is counted as one.
func TestStoreCommandLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := newStoreCommands(reg)
	mon := s.monitor()
	ctx := context.Background()
	start := func(id int64, name string, cmd bson.D) {
		raw, err := bson.Marshal(cmd)
		if err != nil {
			t.Fatal(err)
		}
		mon.Started(ctx, &event.CommandStartedEvent{Command: raw, CommandName: name, RequestID: id})
	}
	start(1, "find", bson.D{{Key: "find", Value: "instances"}})
	start(2, "getMore", bson.D{{Key: "getMore", Value: int64(77)}, {Key: "collection", Value: "changes"}})
	start(3, "ping", bson.D{{Key: "ping", Value: 1}})
	start(4, "update", bson.D{{Key: "update", Value: "locks"}})
	mon.Succeeded(ctx, &event.CommandSucceededEvent{CommandFinishedEvent: event.CommandFinishedEvent{CommandName: "find", RequestID: 1}})
	mon.Succeeded(ctx, &event.CommandSucceededEvent{CommandFinishedEvent: event.CommandFinishedEvent{CommandName: "getMore", RequestID: 2}})
	mon.Succeeded(ctx, &event.CommandSucceededEvent{CommandFinishedEvent: event.CommandFinishedEvent{CommandName: "ping", RequestID: 3}})
	mon.Failed(ctx, &event.CommandFailedEvent{CommandFinishedEvent: event.CommandFinishedEvent{CommandName: "update", RequestID: 4}})

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "semnet_root_store_command_seconds" && len(f.GetMetric()) != 4 {
			t.Fatalf("%d label sets timed, want 4", len(f.GetMetric()))
		}
	}
	for _, c := range []struct{ cmd, coll string }{{"find", "instances"}, {"getMore", "changes"}, {"ping", ""}, {"update", "locks"}} {
		if got := write(t, s.seconds.WithLabelValues(c.cmd, c.coll).(prometheus.Metric)).GetHistogram().GetSampleCount(); got != 1 {
			t.Errorf("%s %q: %d timed, want 1", c.cmd, c.coll, got)
		}
	}
	if got := write(t, s.failures.WithLabelValues("update", "locks")).GetCounter().GetValue(); got != 1 {
		t.Errorf("failed update on locks counted %v times, want 1", got)
	}
	if got := write(t, s.failures.WithLabelValues("find", "instances")).GetCounter().GetValue(); got != 0 {
		t.Errorf("succeeded find counted as failed %v times", got)
	}
	n := 0
	s.inFlight.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Errorf("%d finished commands still remembered", n)
	}
}

// write reads one metric's current value.
func write(t *testing.T, m prometheus.Metric) *dto.Metric {
	t.Helper()
	out := &dto.Metric{}
	if err := m.Write(out); err != nil {
		t.Fatal(err)
	}
	return out
}
