import sys

import postage as kiwipy

message = ' '.join(sys.argv[1:]) or 'Hello World!'

with kiwipy.connect('amqp://localhost') as comm:
    comm.task_send(message)
    print(" [x] Sent %r" % message)
