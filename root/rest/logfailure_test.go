package rest_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/semnet/semnet/root/rest"
	"github.com/semnet/semnet/shared/httpapi"
)

// TestLogFailure: a server-side failure is logged as an error, unless the request's
// client had gone (its store read was cancelled with it), which is debug; problems the
// handler answered are not logged at all.
func TestLogFailure(t *testing.T) {
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct {
		name string
		ctx  context.Context
		err  error
		want string // the log line's level and message, "" for none
	}{
		{"failure", context.Background(), errors.New("mongo: timed out"), "level=ERROR msg=\"request failed\""},
		{"client gone", gone, errors.New("mongo: canceled"), "level=DEBUG msg=\"request abandoned by its client\""},
		{"problem", context.Background(), httpapi.Errorf(http.StatusBadRequest, "bad"), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			r := httptest.NewRequestWithContext(c.ctx, http.MethodGet, "/api/v1/resolve/x", nil)
			rest.LogFailure(log, r, c.err)
			got := buf.String()
			if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) || strings.Count(got, "\n") > 1 {
				t.Errorf("logged %q, want one line with %q", got, c.want)
			}
		})
	}
}
