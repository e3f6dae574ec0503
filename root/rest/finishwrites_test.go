package rest

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestFinishWrites: a write request keeps running after its client gave up (its work is
// not cut between two store writes); a read stops with its client.
func TestFinishWrites(t *testing.T) {
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodGet} {
		t.Run(method, func(t *testing.T) {
			started := make(chan struct{})
			handlerErr := make(chan error, 1)
			var inner http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body) // the server watches the connection once the body is read
				close(started)
				<-r.Context().Value(connCtxKey{}).(context.Context).Done() // the client is gone
				handlerErr <- r.Context().Err()
			})
			// Outside finishWrites: remember the request's own context, which the server
			// cancels when the client goes.
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				finishWrites(inner).ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), connCtxKey{}, r.Context())))
			}))
			defer srv.Close()
			ctx, cancel := context.WithCancel(t.Context())
			req, _ := http.NewRequestWithContext(ctx, method, srv.URL, strings.NewReader("{}"))
			go func() { <-started; cancel() }()
			if _, err := http.DefaultClient.Do(req); err == nil {
				t.Fatal("the request was answered; it should have been cancelled")
			}
			select {
			case err := <-handlerErr:
				if method == http.MethodGet && err == nil {
					t.Error("a read kept running after its client went")
				}
				if method != http.MethodGet && err != nil {
					t.Errorf("a write was cancelled with its client: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the handler never saw its client go")
			}
		})
	}
}

type connCtxKey struct{}
