// Package httpapi is the one place that knows how semnet's REST servers speak HTTP:
// RFC 9457 problem+json errors, bearer-token auth, body limits, strict-enough JSON
// decoding with precise messages, request metrics and logs. Root and cluster servers both
// build on it so every API fails the same way.
package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Problem is an RFC 9457 problem detail. It is also an error, so handlers return it.
type Problem struct {
	Type   string `json:"type,omitempty"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	// Instance is the request path the problem occurred on.
	Instance string `json:"instance,omitempty"`

	cause error
}

func (p *Problem) Error() string {
	if p.Detail != "" {
		return p.Detail
	}
	return p.Title
}

func (p *Problem) Unwrap() error { return p.cause }

// Errorf builds a problem with the given status and a detail message. A %w verb keeps the
// wrapped error reachable for errors.Is.
func Errorf(status int, format string, args ...any) *Problem {
	err := fmt.Errorf(format, args...)
	return &Problem{Title: http.StatusText(status), Status: status, Detail: err.Error(), cause: errors.Unwrap(err)}
}

// WriteJSON writes v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client went away; nothing useful to do
}

// StatusClientClosedRequest (499, nginx's) is the status of a request whose client went
// away before it was answered: nobody reads the answer, but the access log and the
// request metrics then tell it from the server's own failures.
const StatusClientClosedRequest = 499

// WriteProblem writes err as problem+json. A *Problem anywhere in err's chain gives the
// status and detail; Classify maps other errors; anything else is a 500 whose detail is
// not leaked to the client (it is logged by the caller), or a 499 when the request's
// client had gone by then (its failure is most likely that cancellation: a store read
// cancelled with the request).
func WriteProblem(w http.ResponseWriter, r *http.Request, err error, classify func(error) *Problem) {
	var p *Problem
	if !errors.As(err, &p) {
		if classify != nil {
			p = classify(err)
		}
		switch {
		case p != nil:
		case r.Context().Err() != nil:
			p = &Problem{Title: "Client Closed Request", Status: StatusClientClosedRequest,
				Detail: "the client went away before the request was answered"}
		default:
			p = &Problem{Title: http.StatusText(http.StatusInternalServerError), Status: http.StatusInternalServerError,
				Detail: "internal error; see the server log for this request"}
		}
	}
	out := *p
	if out.Instance == "" {
		out.Instance = r.URL.Path
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(out.Status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(out)
}
