"""Reads a delivery status notification with Python's email package, the way
a bounce processor written in Python would, and prints what it found."""
import email
import email.parser
import email.policy
import sys

with open(sys.argv[1], "rb") as f:
    msg = email.message_from_binary_file(f, policy=email.policy.default)

assert msg.get_content_type() == "multipart/report", msg.get_content_type()
print("report-type=" + msg.get_param("report-type"))
found = False
for part in msg.walk():
    ctype = part.get_content_type()
    if ctype == "message/delivery-status":
        found = True
        groups = part.get_payload()
        print("reporting-mta=" + str(groups[0]["Reporting-MTA"]))
        for g in groups[1:]:
            print("recipient=" + "|".join(str(g[k] or "") for k in
                  ("Final-Recipient", "Action", "Status", "Remote-MTA")))
    elif ctype == "text/rfc822-headers":
        headers = email.parser.BytesHeaderParser().parsebytes(part.get_payload(decode=True))
        print("headers-subject=" + headers["Subject"])
if not found:
    sys.exit("no message/delivery-status part")
