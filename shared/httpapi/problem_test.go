package httpapi_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/shared/httpapi"
	"github.com/semnet/semnet/shared/syncbuf"
)

// TestAbandonedRequestIsNotAServerError: a request that fails because its client went
// away is answered (to no one) 499 and logged at debug level; the same failure with the
// client still there is a 500, logged as an error.
func TestAbandonedRequestIsNotAServerError(t *testing.T) {
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	entered := make(chan struct{}, 1)
	srv := httptest.NewServer(httpapi.Logger(log)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if r.URL.Query().Has("wait") {
			entered <- struct{}{}
			<-ctx.Done()
		}
		err := ctx.Err()
		if err == nil {
			err = errors.New("store failed")
		}
		httpapi.WriteProblem(w, r, fmt.Errorf("read: %w", err), nil)
	})))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/failing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("a failure with the client there: %d, want 500", resp.StatusCode)
	}

	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/abandoned?wait", nil)
	go func() { <-entered; cancel() }()
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned request: %v, want the client's cancellation", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "path=/abandoned") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	var line500, line499 string
	for _, l := range strings.Split(logs.String(), "\n") {
		switch {
		case strings.Contains(l, "path=/failing"):
			line500 = l
		case strings.Contains(l, "path=/abandoned"):
			line499 = l
		}
	}
	if !strings.Contains(line500, "level=ERROR") || !strings.Contains(line500, "status=500") {
		t.Errorf("the failure with the client there was logged %q, want an error with status 500", line500)
	}
	if !strings.Contains(line499, "level=DEBUG") || !strings.Contains(line499, "status=499") {
		t.Errorf("the abandoned request was logged %q, want debug level and status 499", line499)
	}
}
