package mqttapi

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestUpdatesAvailableChangedAt: a push says when root logged its change, and says
// nothing of it (as the reference's pushes) when that is not known.
func TestUpdatesAvailableChangedAt(t *testing.T) {
	b, err := json.Marshal(UpdatesAvailable{Type: UpdateDeleted})
	if err != nil || string(b) != `{"type":"DELETED"}` {
		t.Fatalf("no change time: %s, %v; want only the type", b, err)
	}
	at := time.Date(2026, 12, 7, 14, 0, 0, 123e6, time.UTC)
	b, err = json.Marshal(UpdatesAvailable{Type: UpdateDeleted, ChangedAt: at})
	if err != nil || !strings.Contains(string(b), `"changed_at":"2026-12-07T14:00:00.123Z"`) {
		t.Fatalf("with a change time: %s, %v", b, err)
	}
	var u UpdatesAvailable
	if err := json.Unmarshal(b, &u); err != nil || !u.ChangedAt.Equal(at) {
		t.Fatalf("decoded %+v, %v; want changed_at %v", u, err, at)
	}
}
