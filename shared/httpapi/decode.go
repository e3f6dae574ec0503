package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// DefaultMaxBody is the largest request body the APIs accept. Every semnet request body is
// a small descriptor; anything bigger is a mistake or an attack.
const DefaultMaxBody = 1 << 20

// DecodeJSON reads one JSON value from the request body into v. Unknown fields are ignored
// (the platform's contract: either side may add fields). Errors are problems with a
// precise detail: 413 for an oversized body, 400 naming the offset or field otherwise.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, DefaultMaxBody)
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(v); err != nil {
		return decodeProblem(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return decodeProblem(err)
		}
		return Errorf(http.StatusBadRequest, "request body has data after the JSON value")
	}
	return nil
}

func decodeProblem(err error) error {
	var (
		mbe *http.MaxBytesError
		se  *json.SyntaxError
		te  *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &mbe):
		return Errorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", mbe.Limit)
	case errors.Is(err, io.EOF):
		return Errorf(http.StatusBadRequest, "request body is empty; expected a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(http.StatusBadRequest, "request body is truncated JSON")
	case errors.As(err, &se):
		return Errorf(http.StatusBadRequest, "malformed JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "(top level)"
		}
		return Errorf(http.StatusBadRequest, "field %s: expected %s, got JSON %s", field, te.Type, te.Value)
	default:
		return Errorf(http.StatusBadRequest, "invalid request body: %v", fmt.Sprint(err))
	}
}
