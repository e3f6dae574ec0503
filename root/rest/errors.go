package rest

import (
	"context"
	"errors"
	"net/http"

	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/shared/httpapi"
	"github.com/semnet/semnet/shared/ippool"
)

// Classify maps core errors to HTTP problems. The detail is the error's own message,
// which names the thing and the fix. Pool exhaustion is 507 Insufficient Storage: unlike
// a 409 it is not about this request's content, so clients can alert on it separately.
func Classify(err error) *httpapi.Problem {
	status := 0
	switch {
	case errors.Is(err, registry.ErrInvalid), errors.Is(err, ippool.ErrOutOfRange), errors.Is(err, ippool.ErrReserved):
		status = http.StatusBadRequest
	case errors.Is(err, store.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, store.ErrAlreadyExists), errors.Is(err, store.ErrAddressTaken), errors.Is(err, store.ErrHasInstances),
		errors.Is(err, registry.ErrConflict),
		errors.Is(err, ippool.ErrInUse), errors.Is(err, ippool.ErrQuarantined):
		status = http.StatusConflict
	case errors.Is(err, ippool.ErrExhausted):
		status = http.StatusInsufficientStorage
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		status = http.StatusServiceUnavailable
	default:
		return nil
	}
	return &httpapi.Problem{Title: http.StatusText(status), Status: status, Detail: err.Error()}
}
