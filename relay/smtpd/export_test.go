package smtpd

// AssertCRLFOnly is assertCRLFOnly for the relay's tests in smtpd_test,
// which check stored messages the same way.
var AssertCRLFOnly = assertCRLFOnly
